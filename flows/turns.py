"""One training run per project at a time on a lasting Prefect server: a global concurrency limit per project.

A second deployment run of a project that is training waits here for its turn instead of failing on
the storage lock. Only deployment runs take a turn: a deployment exists only on a server that
outlives the run (a worker's, `anima-lora serve`'s, Prefect Cloud), where the limit's lease is kept
and freed again if the holder dies: at once when the holder is proven dead (a waiting run or
`anima-lora queue` closes it, tasks/history.py), else when its lease expires on the server. A CLI or notebook run may be on a private server that vanishes
with it; there the storage lock remains the guard.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath, PureWindowsPath

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import deployment, flow_run

from ..errors import UserInputError, setting
from ..tasks.history import HOST_LABEL, PID_LABEL, TURN_LEASE_LABEL, close_dead_runs

# The server frees the turn of a run that stopped renewing after this (when its lease service runs; a
# dead run closed by close_dead_runs gives its turn back at once). Renewed three times per period, so a
# renewal may fail twice (a server restart) before the turn is lost.
LEASE_S = 120.0
WAIT_MAX_S = 30.0  # the longest pause between two tries for the turn (the server's Retry-After, capped)


def turn_limit_name(project: str) -> str:
    return f"anima-lora-{project}"


def ensure_turn_limit(project: str) -> str:
    """Create the project's limit (one slot) unless it exists; a limit an operator changed is left alone."""
    name = turn_limit_name(project)
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


def check_lasting_storage(storage: str) -> None:
    """Refuse a relative local storage in a deployment's run: it would land in the run's working
    directory, a temporary folder that a process worker (or `serve`) deletes with the LoRA in it."""
    if "://" in storage or PurePosixPath(storage).is_absolute() or PureWindowsPath(storage).is_absolute() \
            or storage.startswith("~"):
        return
    raise UserInputError(
        f"{setting('storage', storage)} is a relative path, and a deployment's run works in a temporary folder "
        "that is deleted when it ends, LoRA included; give an absolute folder on the worker's machine or a URL "
        "such as gs://bucket/anima-runs",
        field="storage",
    )


@contextlib.contextmanager
def project_turn(project: str, *, storage: str | None = None, needed: bool = True) -> Iterator[None]:
    """Hold the project's slot for the block (waiting for it first) when this is a deployment run,
    after checking that its `storage` outlives the run."""
    if not needed or deployment.id is None:
        yield
        return
    if storage is not None:
        check_lasting_storage(storage)
    name = ensure_turn_limit(project)
    logger = get_run_logger()
    logger.info("taking project %s's turn (concurrency limit %s): another run of it training now makes "
                "this one wait until that run ends", project, name)
    me = flow_run.get_id()
    with get_client(sync_client=True) as client:
        # Host and pid first: if this process dies while waiting, the next run or queue can tell it is gone.
        client.update_flow_run_labels(me, {HOST_LABEL: socket.gethostname(), PID_LABEL: os.getpid()})
        earlier = (client.read_flow_run(uuid.UUID(str(me))).labels or {}).get(TURN_LEASE_LABEL)
        if earlier:
            # This run started before and died holding the turn (a crashed run put back in its pool's
            # queue, `anima-lora auto-resume`): the lease is its own and would make it wait for itself.
            with contextlib.suppress(Exception):
                client.release_concurrency_slots_with_lease(uuid.UUID(str(earlier)))
        lease = take_turn(client, name, project, me, log=logger.info)
        client.update_flow_run_labels(me, {TURN_LEASE_LABEL: str(lease)})
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease, stop, logger), name="project-turn-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=10)
        with get_client(sync_client=True) as client, contextlib.suppress(Exception):
            client.release_concurrency_slots_with_lease(lease)


def take_turn(client, name: str, project: str, me, *, log=print) -> uuid.UUID:
    """Wait for the project's one slot and return the lease holding it. While waiting, the project's runs
    whose process is known to be gone are closed and give their turn back (tasks/history.py): a killed
    holder would otherwise keep it until its lease expires, or for ever on a server without services."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=me) if me else None
    while True:
        close_dead_runs(client, project, skip=me, log=log)
        try:
            response = client.increment_concurrency_slots_with_lease([name], 1, "concurrency", LEASE_S, holder=holder)
            return uuid.UUID(response.json()["lease_id"])
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: the slot is taken, try again later
                raise
            retry_after = float(exc.response.headers.get("Retry-After") or WAIT_MAX_S)
            time.sleep(min(max(retry_after, 1.0), WAIT_MAX_S))


def _renew(lease: uuid.UUID, stop: threading.Event, logger) -> None:
    # A renewal that fails (a server restart) must not end hours of training: the storage lock still guards.
    while not stop.wait(LEASE_S / 3):
        try:
            with get_client(sync_client=True) as client:
                client.renew_concurrency_lease(lease, LEASE_S).raise_for_status()
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not renew project turn lease %s: %s", lease, exc)
