"""Run history: runs left Running by a dead machine are closed; `anima-lora status` shows the store."""

from __future__ import annotations

import json

from anima_lora_flow.cli import main
from anima_lora_flow.tasks.history import FLOW_NAME, is_stale, mark_stale_runs_crashed_task, this_process


def test_is_stale_rules():
    me = this_process()
    host = me.rpartition(":")[0]
    assert "gone" in is_stale("old-colab-vm:123", me=me)
    assert "no longer exists" in is_stale(f"{host}:999999", me=me)
    assert is_stale(me, me=me) is None
    assert is_stale(None, me=me) is None


def test_stale_running_run_is_marked_crashed(prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name=FLOW_NAME)
    def stand_in(config: dict):
        return mark_stale_runs_crashed_task("proj")

    with get_client(sync_client=True) as client:
        dead = client.create_flow_run(stand_in, parameters={"config": {"project_name": "proj"}})
        client.set_flow_run_state(dead.id, Running(), force=True)
        client.update_flow_run(dead.id, infrastructure_pid="old-colab-vm:4242")
        other = client.create_flow_run(stand_in, parameters={"config": {"project_name": "another"}})
        client.set_flow_run_state(other.id, Running(), force=True)
        client.update_flow_run(other.id, infrastructure_pid="old-colab-vm:4243")

    closed = stand_in(config={"project_name": "proj"})
    assert closed == [str(dead.id)]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(dead.id).state.type.value == "CRASHED"
        assert client.read_flow_run(other.id).state.type.value == "RUNNING"


def test_status_lists_states_checkpoints_and_runs(tmp_path, capsys):
    from anima_lora_flow.storage import RunStore, resolve_location

    store = RunStore(resolve_location(str(tmp_path)), "p")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"w")
    store.publish_state(folder, 12, epoch=1, fingerprint="f")
    store.publish_file(folder / "adapter.safetensors", "checkpoints/p-000001.safetensors")
    store.append_run({"run_id": "r1", "outcome": "stopped", "steps_done": 12, "total_steps": 24, "started": 0})
    assert main(["status", "p", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "step      12  1 epoch done  ok" in out and "p-000001.safetensors" in out and "stopped" in out
    assert main(["status", "p", "--storage", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latest"] == 12
