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

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import deployment


def turn_limit_name(project: str) -> str:
    return f"anima-lora-{project}"


def ensure_turn_limit(project: str) -> str:
    """Create the project's limit (one slot) unless it exists; a limit an operator changed is left alone."""
    name = turn_limit_name(project)
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextlib.contextmanager
def project_turn(project: str, *, needed: bool = True) -> Iterator[None]:
    """Hold the project's slot for the block (waiting for it first) when this is a deployment run."""
    if not needed or deployment.id is None:
        yield
        return
    name = ensure_turn_limit(project)
    get_run_logger().info("taking project %s's turn (concurrency limit %s): another run of it training now makes "
                          "this one wait until that run ends", project, name)
    # The lease is renewed while the run lives; if its process is killed, the server frees the slot
    # when the lease runs out, so a crashed run does not block the project for ever.
    # A renewal that fails once (a server restart) must not end hours of training: strict only for the acquiring.
    with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        yield
