"""Issue 19's "done when" for the queue: a worker killed mid-training, a new worker, the same `queue` again,
and every LoRA byte-identical to an uninterrupted run of the same entry.

Real parts throughout: a local Prefect server, prefect.yaml deployed with `prefect deploy`, a process work
pool limited to one run, `prefect worker start` subprocesses, `anima-lora queue` and `anima-lora train`
commands. The only signals sent are SIGKILLs of the worker's process group and of its flow run's group (a
machine or container dying); the trainer must end by itself (its watchdog).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

ROOT = Path(__file__).parents[2]
POOL = "gpu-pool"  # prefect.yaml's
MARKER = "ANIMA_KILLED_WORKER_TEST"  # in the workers' environment, so inherited by everything they start


def _prefect(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def _marked(value: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries MARKER=value: a worker and all it started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if f"{MARKER}={value}".encode() not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _describe(pids: list[int]) -> str:
    lines = []
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"{pid}: {args[:200]}")
        except OSError:
            pass
    return "\n".join(lines)


def _start_worker(env: dict, folder: Path, name: str) -> subprocess.Popen:
    log = (folder / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process",
                             "--name", name], cwd=folder, env={**env, MARKER: name}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plans(work: Path) -> list[dict]:
    from anima_lora_flow.trainer.events import read_events

    return [e.data for path in sorted(work.glob("runs/*/events.jsonl")) for e in read_events(path) if e.event == "plan"]


@pytest.mark.slow
def test_a_killed_worker_restarted_and_the_queue_again_finish_every_lora_as_an_uninterrupted_run(prefect_harness,
                                                                                                tmp_path):
    from prefect.settings import PREFECT_API_URL

    from anima_lora_flow.demo import demo_config
    from anima_lora_flow.flows.queue import read_queue_file
    from anima_lora_flow.storage import RunStore, resolve_location

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    _prefect(["work-pool", "create", POOL, "--type", "process"], env)  # may exist from another test: fine
    limited = _prefect(["work-pool", "set-concurrency-limit", POOL, "1"], env)
    assert limited.returncode == 0, limited.stdout + limited.stderr
    deployed = _prefect(["--no-prompt", "deploy", "--all"], env)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]

    demo = demo_config(tmp_path / "demo")
    queue_file = tmp_path / "three.toml"
    # The first entry saves a state every step and trains long enough to be killed in the middle.
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
project_name = "killed-a"
work_dir = "./work-a"
max_train_epochs = 3
save_state_every_minutes = 1e-5

[[project]]
project_name = "killed-b"
work_dir = "./work-b"
network_dim = 2
network_alpha = 2

[[project]]
project_name = "killed-c"
work_dir = "./work-c"
learning_rate = 5e-4
""")
    entries = read_queue_file(queue_file)
    stores = {e.project: RunStore(resolve_location(str(tmp_path / "runs")), e.project) for e in entries}
    cli = [sys.executable, "-m", "anima_lora_flow.cli", "queue", str(queue_file), "--pool", POOL]
    started = time.monotonic()

    first_worker = _start_worker(env, tmp_path, "worker-1")
    second_worker = None
    try:
        submitted = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "3 of 3 entries submitted" in submitted.stdout

        # Mid-training of the first entry: a state saved, the final LoRA not yet.
        store = stores["killed-a"]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if len(store.list_states()) >= 2 and store.checkpoint_name() not in store.list_checkpoints():
                break
            assert first_worker.poll() is None, (tmp_path / "worker-1.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the first entry saved no state in time:\n" + (tmp_path / "worker-1.log").read_text()[-3000:])
        assert store.checkpoint_name() not in store.list_checkpoints(), "the first entry finished before the kill"
        running = _marked("worker-1")
        flow_runs = [pid for pid in running if _parent(pid) == first_worker.pid]
        assert flow_runs, _describe(running)
        # The machine dies: the worker, and its flow run (a session of its own, started by the worker).
        os.killpg(first_worker.pid, signal.SIGKILL)
        for pid in flow_runs:
            os.killpg(pid, signal.SIGKILL)
        first_worker.wait()
        killed = time.monotonic()
        while _marked("worker-1") and time.monotonic() - killed < 15:
            time.sleep(0.5)
        left = _marked("worker-1")
        assert not left, f"still running 15 s after the kill:\n{_describe(left)}"
        saved = store.list_states()[-1].step
        assert 0 < saved

        second_worker = _start_worker(env, tmp_path, "worker-2")
        again = subprocess.run([*cli, "--wait", "--poll-seconds", "1"], env=env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=900)
        worker_log = (tmp_path / "worker-2.log").read_text()[-4000:]
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:] + worker_log
    finally:
        _stop(first_worker)
        if second_worker is not None:
            _stop(second_worker)
        for name in ("worker-1", "worker-2"):
            for pid in _marked(name):
                os.kill(pid, signal.SIGKILL)
    queued_s = time.monotonic() - started

    # Only the killed entry went in again, and it resumed from the state its dead run saved.
    assert "1 of 3 entries submitted" in again.stdout, again.stdout
    assert "entry 1 (killed-a): submitted as flow run" in again.stdout
    assert "(resumes from its storage)" in again.stdout
    resumed = [p["start_step"] for p in _plans(tmp_path / "work-a") if p.get("start_step")]
    assert resumed == [saved], _plans(tmp_path / "work-a")

    # The same entries trained straight through, each by `anima-lora train` into storage of its own.
    for entry in entries:
        settings = entry.config.model_dump(mode="json") | {
            "storage": str(tmp_path / "straight"), "work_dir": str(tmp_path / f"straight-{entry.project}")}
        config_file = tmp_path / f"{entry.project}.toml"
        config_file.write_text(tomli_w.dumps({k: v for k, v in settings.items() if v is not None}))
        done = subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", "train", "--config", str(config_file)],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        straight = RunStore(resolve_location(str(tmp_path / "straight")), entry.project)
        final = f"checkpoints/{straight.checkpoint_name()}"
        queued = Path(stores[entry.project].path(final))
        assert queued.is_file(), entry.project
        assert _sha(queued) == _sha(Path(straight.path(final))), entry.project
    print(f"queue with a killed worker: {queued_s:.0f} s; the whole test: {time.monotonic() - started:.0f} s")
