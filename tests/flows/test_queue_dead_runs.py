"""A run whose process died (a worker or machine killed mid-run) stays Running on the server for ever. The
queue and a run waiting for its project's turn close it (Crashed) by the rule of tasks/history.py and take
back what it held: its entry is submitted again, and its project's turn is free at once.

Against a real Prefect server (the session harness, which runs no lease-expiry service: a dead run's turn
is never freed by the server there); the dead run's process is a real process that has exited."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from anima_lora_flow.flows.queue import deployment_for, entry_runs, read_queue_file, submit
from anima_lora_flow.flows.turns import ensure_turn_limit, take_turn, turn_limit_name
from anima_lora_flow.tasks.history import HOST_LABEL, PID_LABEL, RUN_LABEL, TURN_LEASE_LABEL


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _hold_turn(client, project: str, run_id) -> uuid.UUID:
    """The project's turn taken for the flow run, as project_turn takes it, and labelled on the run."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    name = ensure_turn_limit(project)
    response = client.increment_concurrency_slots_with_lease(
        [name], 1, "concurrency", 600, holder=ConcurrencyLeaseHolder(type="flow_run", id=run_id))
    lease = uuid.UUID(response.json()["lease_id"])
    client.update_flow_run_labels(run_id, {TURN_LEASE_LABEL: str(lease)})
    return lease


def _running(client, run_id, pid: int) -> None:
    from prefect.states import Running

    client.set_flow_run_state(run_id, Running(), force=True)
    client.update_flow_run_labels(run_id, {HOST_LABEL: socket.gethostname(), PID_LABEL: pid, RUN_LABEL: "r"})


def test_the_queue_again_closes_a_dead_run_frees_its_turn_and_submits_its_entry(prefect_harness, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "two.toml"
    path.write_text("[defaults]\ndataset = \"/data/x\"\nstorage = \"./runs\"\n" + "".join(
        f"[[project]]\nproject_name = \"{name}-{tag}\"\n" for name in ("dead", "live")))
    entries = read_queue_file(path)
    pool = f"pool-{tag}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment = deployment_for(client, f"queue-{tag}", pool)
        dead, live = (item.runs[0] for item in
                      submit(client, deployment, entry_runs(client, deployment.id, entries), "two", log=lambda _: None))
        _running(client, dead.id, dead_pid())  # its worker was SIGKILLed mid-training
        _running(client, live.id, os.getpid())  # trains now, on this machine
        _hold_turn(client, f"dead-{tag}", dead.id)

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    again = subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", "queue", str(path), "--pool", pool,
                            "--deployment", f"queue-{tag}"], env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 of 2 entries submitted" in again.stdout, again.stdout
    assert f"entry 1 (dead-{tag}): marked earlier run {dead.name} of project dead-{tag} Crashed: its process" in again.stdout
    assert f"entry 1 (dead-{tag}): submitted as flow run" in again.stdout and "(resumes from its storage)" in again.stdout
    assert f"entry 2 (live-{tag}): run {live.name} is running; not submitted again" in again.stdout

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(dead.id).state.type.value == "CRASHED"
        assert client.read_flow_run(live.id).state.type.value == "RUNNING"
        assert client.read_global_concurrency_limit_by_name(turn_limit_name(f"dead-{tag}")).active_slots == 0


def test_a_run_waiting_for_its_turn_takes_it_from_a_dead_holder(prefect_harness, tmp_path: Path):
    from prefect.client.orchestration import get_client

    tag = uuid.uuid4().hex[:8]
    project = f"turn-{tag}"
    path = tmp_path / "one.toml"
    path.write_text(f"[[project]]\ndataset = \"/data/x\"\nstorage = \"{tmp_path / 'runs'}\"\nproject_name = \"{project}\"\n")
    entries = read_queue_file(path)
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.actions import WorkPoolCreate

        client.create_work_pool(WorkPoolCreate(name=f"pool-{tag}", type="process"))
        deployment = deployment_for(client, f"turn-{tag}", f"pool-{tag}")
        holder = submit(client, deployment, entry_runs(client, deployment.id, entries), "one", log=lambda _: None)[0].runs[0]
        _running(client, holder.id, dead_pid())
        _hold_turn(client, project, holder.id)

    taken: list = []

    def wait_for_turn():
        with get_client(sync_client=True) as client:
            taken.append(take_turn(client, turn_limit_name(project), project, None, log=lambda _: None))

    waiter = threading.Thread(target=wait_for_turn, daemon=True)
    waiter.start()
    waiter.join(timeout=60)  # the lease has 600 s left and the harness never expires it: only closing frees it
    assert taken, "still waiting for the turn of a run whose process is gone"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(holder.id).state.type.value == "CRASHED"
        assert client.read_global_concurrency_limit_by_name(turn_limit_name(project)).active_slots == 1  # now ours
        client.release_concurrency_slots_with_lease(taken[0])
