"""One training run per project at a time on a lasting Prefect server: a global concurrency limit per project.

A second deployment run of a project that is training waits here for its turn instead of failing on
the storage lock. Only deployment runs take a turn: a deployment exists only on a server that
outlives the run (a worker's, `anima-lora serve`'s, Prefect Cloud), where the limit's lease is kept
and freed again if the holder dies. A CLI or notebook run may be on a private server that vanishes
with it; there the storage lock remains the guard.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import PurePosixPath, PureWindowsPath

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import deployment

from ..errors import UserInputError, setting


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
    get_run_logger().info("taking project %s's turn (concurrency limit %s): another run of it training now makes "
                          "this one wait until that run ends", project, name)
    # The lease is renewed while the run lives; if its process is killed, the server frees the slot
    # when the lease runs out, so a crashed run does not block the project for ever.
    # A renewal that fails once (a server restart) must not end hours of training: strict only for the acquiring.
    with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        yield
