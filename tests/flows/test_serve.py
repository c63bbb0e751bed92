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
