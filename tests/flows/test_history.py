"""Run history: runs left Running by a dead machine are closed; `anima-lora status` shows the store."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from anima_lora_flow.cli import main
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.lock import LOCK_FILE, STALE_S
from anima_lora_flow.tasks.history import (
    FLOW_NAME,
    HOST_LABEL,
    PID_LABEL,
    RUN_LABEL,
    mark_stale_runs_crashed_task,
    run_labels,
    why_dead,
)


def dead_pid() -> int:
    """The pid of a real process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(storage, project: str, run_id: str, host: str, heartbeat: float) -> None:
    store = RunStore(resolve_location(str(storage)), project)
    record = {"run_id": run_id, "host": host, "pid": 4242, "started": heartbeat, "heartbeat": heartbeat}
    store.write_bytes(LOCK_FILE, json.dumps(record).encode())


def test_why_dead_rules():
    here = socket.gethostname()
    now = 1_000_000.0
    elsewhere = {HOST_LABEL: "other-vm", PID_LABEL: 4242, RUN_LABEL: "r1"}
    fresh = {"run_id": "r1", "host": "other-vm", "heartbeat": now - 10}
    stale = {**fresh, "heartbeat": now - STALE_S - 1}

    assert why_dead(elsewhere, lambda: fresh, now=now) is None
    assert "no heartbeat for" in why_dead(elsewhere, lambda: stale, now=now)
    assert why_dead(elsewhere, lambda: None, now=now) is None  # no lock: nothing proves it dead
    assert why_dead(elsewhere, lambda: {**stale, "run_id": "r2"}, now=now) is None  # another run's lock
    assert "is gone" in why_dead({**elsewhere, HOST_LABEL: here, PID_LABEL: dead_pid()}, lambda: None, now=now)
    # On this machine a live process is alive whatever its lock says.
    assert why_dead(run_labels("r1"), lambda: stale, now=now) is None
    assert why_dead({}, lambda: stale, now=now) is None  # unlabelled: not judged


def test_stale_running_runs_are_marked_crashed_by_their_own_evidence(prefect_harness, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name=FLOW_NAME)
    def stand_in(config: dict):
        return mark_stale_runs_crashed_task("proj")

    now = time.time()
    here = socket.gethostname()
    with get_client(sync_client=True) as client:

        def running(labels: dict, storage: str, project: str = "proj") -> str:
            run = client.create_flow_run(stand_in, parameters={"config": {"project_name": project, "storage": storage}})
            client.set_flow_run_state(run.id, Running(), force=True)
            client.update_flow_run_labels(run.id, labels)
            return str(run.id)

        # One lock per project folder: each run of "proj" on another machine has its own storage root.
        live_elsewhere = running({HOST_LABEL: "other-vm", PID_LABEL: 4242, RUN_LABEL: "r-live"}, str(tmp_path / "a"))
        write_lock(tmp_path / "a", "proj", "r-live", "other-vm", heartbeat=now - 5)
        dead_elsewhere = running({HOST_LABEL: "dead-vm", PID_LABEL: 4343, RUN_LABEL: "r-dead"}, str(tmp_path / "b"))
        write_lock(tmp_path / "b", "proj", "r-dead", "dead-vm", heartbeat=now - STALE_S - 60)
        # On another machine with no lock of its own yet (still preparing, or died before): not provably dead.
        unlocked_elsewhere = running({HOST_LABEL: "third-vm", PID_LABEL: 4444, RUN_LABEL: "r-prep"}, str(tmp_path / "c"))
        dead_here = running({HOST_LABEL: here, PID_LABEL: dead_pid(), RUN_LABEL: "r-here"}, str(tmp_path / "a"))
        other_project = running({HOST_LABEL: here, PID_LABEL: dead_pid(), RUN_LABEL: "r-x"}, str(tmp_path / "a"),
                                project="another")

    closed = stand_in(config={"project_name": "proj", "storage": str(tmp_path / "a")})

    assert sorted(closed) == sorted([dead_elsewhere, dead_here])
    with get_client(sync_client=True) as client:
        states = {run_id: client.read_flow_run(run_id).state
                  for run_id in (live_elsewhere, dead_elsewhere, unlocked_elsewhere, dead_here, other_project)}
    assert states[live_elsewhere].type.value == "RUNNING"
    assert states[unlocked_elsewhere].type.value == "RUNNING"
    assert states[other_project].type.value == "RUNNING"
    assert states[dead_elsewhere].type.value == "CRASHED" and "no heartbeat" in states[dead_elsewhere].message
    assert states[dead_here].type.value == "CRASHED" and "on this machine is gone" in states[dead_here].message


def test_the_flow_labels_its_run_with_host_and_pid(prefect_harness):
    import os

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from anima_lora_flow.tasks.history import label_this_flow_run

    @flow(name="label-stand-in")
    def labelled():
        label_this_flow_run("r-123")
        return str(flow_run.get_id())

    run_id = labelled()
    with get_client(sync_client=True) as client:
        labels = client.read_flow_run(run_id).labels
    assert labels[HOST_LABEL] == socket.gethostname()
    assert int(labels[PID_LABEL]) == os.getpid()
    assert labels[RUN_LABEL] == "r-123"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id).infrastructure_pid is None  # the worker's field, left to it


def test_status_lists_states_checkpoints_and_runs(tmp_path, capsys):
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
