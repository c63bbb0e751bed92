"""`anima-lora serve` as a real process against a local Prefect server: runs created on its deployment
(as the UI's form does) are executed on this machine one at a time (no GPU here: one slot)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_serve_runs_the_forms_runs_one_at_a_time(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from anima_lora_flow.demo import demo_config

    demo = demo_config(tmp_path / "demo")  # the tiny model (no GPU here) and the generated dataset
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen([sys.executable, "-m", "anima_lora_flow.cli", "serve", "--name", "served-here"],
                             cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 180
            deployment = None
            while deployment is None:
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "serve registered no deployment in 180 s"
                try:
                    deployment = client.read_deployment_by_name("train-anima-lora/served-here")
                except ObjectNotFound:
                    time.sleep(1)
            assert deployment.entrypoint == "anima_lora_flow.flows.train_lora.train_lora"
            runs = [
                client.create_flow_run_from_deployment(deployment.id, parameters={"dry_run": True, "config": {
                    "project_name": name, "dataset": demo.dataset, "models_dir": demo.models_dir,
                    "storage": str(tmp_path / "runs"), "work_dir": str(tmp_path / "work"), "resolution": 256}})
                for name in ("first", "second")
            ]
            deadline = time.monotonic() + 400
            while True:
                runs = [client.read_flow_run(run.id) for run in runs]
                if all(run.state.is_final() for run in runs):
                    break
                assert time.monotonic() < deadline, [run.state_name for run in runs]
                time.sleep(2)
        assert [run.state_name for run in runs] == ["Completed", "Completed"], (tmp_path / "serve.log").read_text()[-3000:]
        first, second = sorted(runs, key=lambda run: run.start_time)
        assert first.end_time <= second.start_time  # one run at a time without a GPU
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        log.close()


def _runners(pid: int) -> list[int]:
    """The runner processes `pid` started (not their watchdogs)."""
    path = f"/proc/{pid}/task/{pid}/children"
    children = [int(p) for p in open(path).read().split()] if os.path.exists(path) else []
    return [child for child in children
            if os.path.exists(f"/proc/{child}/cmdline") and b"flows.serve" in open(f"/proc/{child}/cmdline", "rb").read()]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_per_gpu_runners_each_see_one_device_and_end_with_their_parent(prefect_harness, tmp_path, stop):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from anima_lora_flow.flows.serve import serve_per_gpu; "
                               "sys.exit(serve_per_gpu('per-gpu', 2))"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(children := _runners(parent.pid)) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "no two runners started"
            time.sleep(0.5)
        devices = sorted(
            dict(item.split("=", 1) for item in open(f"/proc/{child}/environ").read().split("\0") if "=" in item)
            ["CUDA_VISIBLE_DEVICES"] for child in children)
        assert devices == ["0", "1"]
        # A service manager stopping `serve`, or killing it outright: its runners end with it either way.
        parent.send_signal(stop)
        parent.wait(timeout=90)
        deadline = time.monotonic() + 45
        while any(os.path.exists(f"/proc/{child}") and open(f"/proc/{child}/stat").read().split()[2] != "Z"
                  for child in children):
            assert time.monotonic() < deadline, "a runner outlived serve"
            time.sleep(0.5)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
