"""The queue through a real work pool: a local Prefect server, prefect.yaml deployed with `prefect deploy`,
a process worker started as a subprocess, two tiny entries trained one after the other (pool limit 1),
the comparison table published, and a second `queue` submitting nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
POOL = "gpu-pool"  # prefect.yaml's


def _prefect(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.fixture
def process_worker(prefect_harness, tmp_path):
    """A process work pool limited to one run at a time, prefect.yaml deployed to it, and a worker serving it."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "HF_HUB_OFFLINE": "1"}
    _prefect(["work-pool", "create", POOL, "--type", "process"], env)  # may exist from another test: fine
    limited = _prefect(["work-pool", "set-concurrency-limit", POOL, "1"], env)
    assert limited.returncode == 0, limited.stdout + limited.stderr
    deployed = _prefect(["--no-prompt", "deploy", "--all"], env)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield env
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()


@pytest.mark.slow
def test_a_queue_of_two_trains_both_through_the_pool_and_compares_them(process_worker, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey, FlowRunFilter, FlowRunFilterTags

    from anima_lora_flow.demo import demo_config

    demo = demo_config(tmp_path / "demo")  # the tiny model and the generated dataset
    queue_file = tmp_path / "two.toml"
    queue_file.write_text(f"""
[defaults]
dataset = "{demo.dataset}"
models_dir = "{demo.models_dir}"
storage = "{tmp_path / 'runs'}"
network_dim = 4
network_alpha = 4
learning_rate = 1e-3
max_train_epochs = 1
repeats = 1
resolution = 256
lr_warmup_steps = 1
optimizer = "adamw"
mixed_precision = "no"
gradient_checkpointing = false
save_state_every_minutes = 0

[[project]]
project_name = "queue-a"
work_dir = "./work-a"

[[project]]
project_name = "queue-b"
work_dir = "./work-b"
network_dim = 2
network_alpha = 2
""")
    cli = [sys.executable, "-m", "anima_lora_flow.cli", "queue", str(queue_file), "--pool", POOL]
    done = subprocess.run([*cli, "--wait", "--poll-seconds", "1"], env=process_worker, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    worker_log = (tmp_path / "worker.log").read_text()[-3000:]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + worker_log
    assert "2 of 2 entries submitted" in done.stdout

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["anima-lora-queue"])))
        mine = [r for r in runs if f"anima-lora-queue:{queue_file.stem}" in r.tags]
        assert sorted(r.state_name for r in mine) == ["Completed", "Completed"]
        first, second = sorted(mine, key=lambda r: r.start_time)
        assert first.end_time <= second.start_time  # the pool's limit of one: never two at once
        artifact = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=["queue-two"])))
    rows = json.loads(artifact[0].data)
    assert [(row["project"], row["state"]) for row in rows] == [("queue-a", "Completed"), ("queue-b", "Completed")]
    for row in rows:
        done_steps, total = row["steps"].split("/")
        assert done_steps == total and int(total) > 0
        assert Path(row["LoRA"]).is_file() and row["LoRA"].startswith(str(tmp_path / "runs" / row["project"]))
        assert float(row["final loss"]) > 0
    assert (tmp_path / "work-a").is_dir()  # ./ in the file is the file's folder, not the worker's temporary one

    again = subprocess.run(cli, env=process_worker, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 of 2 entries submitted" in again.stdout
    assert again.stdout.count("finished earlier") == 2
