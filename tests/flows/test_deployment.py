"""prefect.yaml: `prefect deploy --all` accepts it against a real server and registers the installed flow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    # The installed package's module, not a file of the folder deployed from, and nothing pulled from it.
    assert deployment.entrypoint == "anima_lora_flow.flows.train_lora.train_lora"
    assert not deployment.pull_steps
    # No default config: a run without parameters is refused by the server, before a worker creates anything.
    assert "config" not in deployment.parameters
    assert "config" in deployment.parameter_openapi_schema["required"]
    assert deployment.enforce_parameter_schema
    with get_client(sync_client=True) as client, pytest.raises(Exception, match="config"):
        client.create_flow_run_from_deployment(deployment.id, parameters={})
