"""What the queue submits against a real Prefect server (no worker: runs stay where the test puts them):
a rerun submits only the entries that neither finished nor wait or train now; the deployment is found or
created on the named pool, and a wrong pool is refused."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.flows.queue import (comparison_rows, deployment_for, entry_runs, pool_limit_hint, read_queue_file,
                                        submit)
from anima_lora_flow.storage import RunStore, resolve_location


def _pool(client, name: str) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate

    client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    return name


def test_a_rerun_submits_only_the_unfinished_entries(prefect_harness, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed

    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "three.toml"
    path.write_text("[defaults]\ndataset = \"/data/x\"\nstorage = \"./runs\"\n" + "".join(
        f"[[project]]\nproject_name = \"{name}-{tag}\"\n" for name in ("done", "failed", "waiting", "stopped")))
    entries = read_queue_file(path)
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        pool = _pool(client, f"pool-{tag}")
        deployment = deployment_for(client, f"queue-{tag}", pool)
        assert deployment.entrypoint == "anima_lora_flow.flows.train_lora.train_lora"
        assert deployment_for(client, f"queue-{tag}", pool).id == deployment.id  # found, not created again

        first = submit(client, deployment, entry_runs(client, deployment.id, entries), "three", log=lines.append)
        assert [item.entry.number for item in first] == [1, 2, 3, 4]
        done, failed, _waiting, stopped = (item.runs[0] for item in first)
        assert done.parameters["config"]["storage"] == str(tmp_path / "runs")  # ./ is the file's folder
        client.set_flow_run_state(done.id, Completed(), force=True)
        client.set_flow_run_state(failed.id, Failed(message="diverged"), force=True)
        # A session stopped at its deadline is Completed by name "Stopped": resumable, so not finished.
        client.set_flow_run_state(stopped.id, Completed(name="Stopped"), force=True)

        lines.clear()
        again = submit(client, deployment, entry_runs(client, deployment.id, entries), "three", log=lines.append)
        assert [item.entry.number for item in again] == [2, 4]
        assert "finished earlier" in lines[0] and "not submitted again" in lines[2]
        assert "resumes from its storage" in lines[1]
        # What the finished entry left in its storage: two sessions, each with held-out losses, and its LoRA.
        store = RunStore(resolve_location(str(tmp_path / "runs")), f"done-{tag}")
        store.append_run({"run_id": "r1", "steps_done": 40, "total_steps": 80, "validation": [[20, 0.31], [40, 0.27]]})
        store.append_run({"run_id": "r2", "steps_done": 80, "total_steps": 80, "validation": [[60, 0.29], [80, 0.28]]})
        store.write_bytes(f"checkpoints/{store.checkpoint_name()}", b"lora")
        before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*"))
        rows = comparison_rows(client, entry_runs(client, deployment.id, entries))
    assert [(row["project"], row["state"], row["flow runs"]) for row in rows] == [
        (f"done-{tag}", "Completed", 1), (f"failed-{tag}", "Scheduled", 2), (f"waiting-{tag}", "Scheduled", 1),
        (f"stopped-{tag}", "Scheduled", 2)]
    assert (rows[0]["steps"], rows[0]["best validation loss"]) == ("80/80", "0.27")  # the best of all its sessions
    assert rows[0]["LoRA"] == store.path("checkpoints", store.checkpoint_name())
    assert (rows[1]["steps"], rows[1]["LoRA"], rows[1]["final loss"]) == ("-", "-", "-")  # nothing there: said, not invented
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*")) == before  # the queue only reads storage


def test_a_missing_pool_or_a_deployment_on_another_pool_is_refused(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    tag = uuid.uuid4().hex[:8]
    with get_client(sync_client=True) as client:
        with pytest.raises(UserInputError, match=f"work pool 'nowhere-{tag}' not found.*prefect work-pool create"):
            deployment_for(client, "train-anima-lora", f"nowhere-{tag}")
        deployment_for(client, f"elsewhere-{tag}", _pool(client, f"a-{tag}"))
        assert f"prefect work-pool set-concurrency-limit a-{tag} N" in pool_limit_hint(client, f"a-{tag}")
        client.update_work_pool(f"a-{tag}", WorkPoolUpdate(concurrency_limit=1))
        assert pool_limit_hint(client, f"a-{tag}") is None
        with pytest.raises(UserInputError, match=f"sends its runs to work pool 'a-{tag}', not 'b-{tag}'"):
            deployment_for(client, f"elsewhere-{tag}", _pool(client, f"b-{tag}"))
