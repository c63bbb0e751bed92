"""Prefect run history: runs of this project left "Running" by a process that died are marked Crashed.

A SIGKILLed process (VM recycled, OOM killer) never reports its end, so its run stays Running forever
(prefect.md §4). Each run labels its flow run with its host, pid and run id (labels are ours to write;
`infrastructure_pid` belongs to the worker). At the next start, a Running run of the project is closed
only on evidence that it is dead:
- on this machine, its process is gone;
- elsewhere, the storage lock it took (storage/lock.py) has had no heartbeat for STALE_S.
A run on another machine with no lock of its own (it died before taking it, or another run took it
over) is left alone: nothing here proves it dead, and a live run must never be marked Crashed.
A deployment run writes its host and pid before it waits for its project's turn (flows/turns.py), so a
run killed while waiting is judged too; its run id (and so its lock) comes once it trains.

The same rule serves the flow at its start, a run waiting for its project's turn (flows/turns.py) and
`anima-lora queue` before it decides what to submit. Closing a dead run also frees what it held: the
pool's slot (a Crashed run no longer counts) and its project's turn (the lease it labelled its run
with), so nothing waits for a process that will never end it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Crashed

from ..config import TrainingConfig
from ..core.processes import pid_alive
from ..storage.location import resolve_location
from ..storage.lock import STALE_S, read_lock
from ..storage.runstore import RunStore

FLOW_NAME = "train-anima-lora"
HOST_LABEL = "anima-lora.host"
PID_LABEL = "anima-lora.pid"
RUN_LABEL = "anima-lora.run-id"  # the run id in the storage lock, which ties the lock to this flow run
TURN_LEASE_LABEL = "anima-lora.turn-lease"  # the lease on the project's turn (flows/turns.py) the run holds
# A run in these states holds a pool slot (and maybe its project's turn) until it ends.
OPEN_STATES = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING)


def run_labels(run_id: str) -> dict[str, str | int]:
    return {HOST_LABEL: socket.gethostname(), PID_LABEL: os.getpid(), RUN_LABEL: run_id}


def label_this_flow_run(run_id: str) -> None:
    """Record this process's host, pid and run id on the current flow run (a no-op outside one)."""
    current = flow_run.get_id()
    if not current:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run_labels(current, run_labels(run_id))


def why_dead(labels: dict[str, Any], read_run_lock: Callable[[], dict | None], *, now: float | None = None,
             stale_s: float = STALE_S) -> str | None:
    """Why a Running run's process is known to be gone, or None while it may be alive.

    `read_run_lock` reads the run's storage lock; it is called only for a run on another machine.
    """
    host, pid = labels.get(HOST_LABEL), labels.get(PID_LABEL)
    if not host or pid is None:
        return None  # not labelled by this flow: no host or pid to judge by
    if host == socket.gethostname():
        try:
            pid = int(pid)
        except (TypeError, ValueError):
            return None
        return None if pid_alive(pid) else f"its process {pid} on this machine is gone"
    lock = read_run_lock()
    if not lock or lock.get("run_id") != labels.get(RUN_LABEL):
        return None
    now = time.time() if now is None else now
    age = now - float(lock.get("heartbeat") or 0)
    if age <= stale_s:
        return None
    return f"its storage lock (run {lock.get('run_id')} on {host}) has had no heartbeat for {age:.0f} s"


def lock_reader(parameters: dict) -> Callable[[], dict | None]:
    """Reads the lock in the run store of the run with these flow-run parameters; None when unreadable."""
    config = parameters.get("config") or {}
    storage = config.get("storage") or TrainingConfig.model_fields["storage"].default
    project = config.get("project_name") or TrainingConfig.model_fields["project_name"].default

    def read() -> dict | None:
        try:
            # Never mount Drive here: a run whose storage this machine cannot see is simply not judged.
            return read_lock(RunStore(resolve_location(storage, mount_drive=False), project))
        except Exception:  # noqa: BLE001 - a store we cannot read proves nothing about the run
            return None

    return read


def close_dead_runs(client, project_name: str, *, skip: str | None = None, log: Callable[[str], Any] | None = None,
                    ) -> list[str]:
    """Mark Crashed the open (pending, running, cancelling) runs of this project whose process is known to
    be gone, freeing their project turn; returns their ids. `skip`: the caller's own flow run."""
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(OPEN_STATES)))),
    )
    closed = []
    for run in runs:
        if skip is not None and str(run.id) == str(skip):
            continue
        if ((run.parameters or {}).get("config") or {}).get("project_name") != project_name:
            continue
        reason = why_dead(run.labels or {}, lock_reader(run.parameters or {}))
        if reason:
            close_run(client, run, reason)
            if log is not None:
                log(f"marked earlier run {run.name} of project {project_name} Crashed: {reason}")
            closed.append(str(run.id))
    return closed


def close_run(client, run, reason: str) -> None:
    """Mark a dead run Crashed and give back the project turn it held (its lease would otherwise hold the
    turn until the server's lease expiry, and a server without its services never expires it)."""
    client.set_flow_run_state(run.id, Crashed(message=f"run never finished: {reason}"), force=True)
    lease = (run.labels or {}).get(TURN_LEASE_LABEL)
    if lease:
        # Already expired and revoked, or never taken: nothing to give back.
        with contextlib.suppress(Exception):
            client.release_concurrency_slots_with_lease(uuid.UUID(str(lease))).raise_for_status()


@task(name="close-stale-runs")
def mark_stale_runs_crashed_task(project_name: str) -> list[str]:
    """Mark this project's open runs whose process is known to be gone Crashed; returns their ids."""
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        return close_dead_runs(client, project_name, skip=flow_run.get_id(), log=logger.info)
