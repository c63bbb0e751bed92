"""prefect.yaml: `prefect deploy --all` accepts it against a real server and registers the flow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _prefect(args, env):
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def test_prefect_deploy_all(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    _prefect(["work-pool", "create", "gpu-pool", "--type", "process"], env)
    deployed = _prefect(["--no-prompt", "deploy", "--all"], env)
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("train-anima-lora/train-anima-lora")
    assert deployment.entrypoint == "flows/train_lora.py:train_lora"
    assert deployment.parameters["config"]["project_name"] == "my_lora"
