"""A project's turn: a deployment run waits on the project's global concurrency limit; other runs do not take one."""

from __future__ import annotations

import threading
import uuid

import pytest
from prefect import flow

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.flows.turns import check_lasting_storage, project_turn, turn_limit_name


@flow
def takes_a_turn(project: str, storage: str | None = None) -> str:
    with project_turn(project, storage=storage):
        return "trained"


def _limit(client, name):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return None


def test_a_run_outside_a_deployment_takes_no_turn(prefect_harness):
    from prefect.client.orchestration import get_client

    project = f"plain-{uuid.uuid4().hex[:8]}"
    assert takes_a_turn(project) == "trained"
    with get_client(sync_client=True) as client:
        assert _limit(client, turn_limit_name(project)) is None  # a private server's limit would die with it


def test_a_deployment_run_waits_while_the_project_holds_its_turn(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.flow_engine import run_flow

    project = f"busy-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        deployment_id = takes_a_turn.to_deployment(name=f"turns-{project}").apply()
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"project": project})
    from anima_lora_flow.flows.turns import ensure_turn_limit

    ensure_turn_limit(project)
    results: list = []
    with concurrency(turn_limit_name(project), occupy=1, strict=True):  # another run of the project trains
        worker = threading.Thread(
            target=lambda: results.append(run_flow(takes_a_turn, flow_run=flow_run, parameters={"project": project})))
        worker.start()
        worker.join(timeout=4)
        assert worker.is_alive() and not results  # waiting for its turn, not failing on a lock
    worker.join(timeout=60)
    assert results == ["trained"]
    with get_client(sync_client=True) as client:
        limit = _limit(client, turn_limit_name(project))
        assert limit is not None and limit.limit == 1 and limit.active_slots == 0  # released when the run ended


def test_a_deployment_run_refuses_storage_in_its_temporary_working_folder(prefect_harness, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    project = f"relative-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        deployment_id = takes_a_turn.to_deployment(name=f"turns-{project}").apply()
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"project": project})
    monkeypatch.chdir(tmp_path)
    state = run_flow(takes_a_turn, flow_run=flow_run, parameters={"project": project, "storage": "./anima-runs"},
                     return_type="state")
    assert state.is_failed()
    with pytest.raises(UserInputError, match="is a relative path.*temporary folder"):
        state.result()
    assert list(tmp_path.iterdir()) == []
    # A plain run keeps today's behaviour (a CLI's ./anima-runs is the user's own folder).
    assert takes_a_turn(project, storage="./anima-runs") == "trained"


@pytest.mark.parametrize("storage", ["/srv/runs", "~/runs", "gs://bucket/runs", "C:\\runs", "/content/drive/MyDrive/x"])
def test_lasting_storage_is_accepted(storage):
    check_lasting_storage(storage)
