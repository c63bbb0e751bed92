"""`train_lora.serve()` on the flow object (a notebook user's way): each run passes its parameter check.

Prefect's runner pickles a served flow object into each run's process by value, with only the globals
its body uses; a string annotation (`from __future__ import annotations`) naming TrainingConfig could not
be resolved there, and every run failed "Validation of flow parameters". Real parts: a local Prefect
server, `serve()` in its own process, a run created from the served deployment (a dry run: no training).
"""

from __future__ import annotations

import pytest

import os
import signal
import subprocess
import sys
import time
import uuid

SERVE = """
from anima_lora_flow.flows.train_lora import train_lora

if __name__ == "__main__":
    train_lora.serve(name="{name}", limit=1)
"""


@pytest.mark.slow  # about a minute: its own serve() process and server round trips
def test_a_run_of_the_flow_served_from_its_object_validates_and_completes(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from anima_lora_flow.demo import demo_config

    name = f"notebook-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "serve_it.py"
    script.write_text(SERVE.format(name=name))
    config = demo_config(tmp_path / "demo").model_dump(mode="json") | {"project_name": "served"}
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "serve.log").open("w")
    served = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            deployment = None
            while deployment is None and time.monotonic() < deadline:
                assert served.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    deployment = client.read_deployment_by_name(f"train-anima-lora/{name}")
                except ObjectNotFound:
                    time.sleep(1)
            assert deployment is not None, (tmp_path / "serve.log").read_text()[-3000:]
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"config": config, "dry_run": True})
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                run = client.read_flow_run(run.id)
                if run.state is not None and run.state.is_final():
                    break
                time.sleep(1)
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        try:
            served.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait()
        log.close()
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state}\n" + (tmp_path / "serve.log").read_text()[-3000:])
