"""Prefect tasks for the run store: mount it, hold the project lock, keep the plan and the run history."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ..config import TrainingConfig
from ..errors import NotBuiltError, TrainingError, UserInputError
from ..planner.plan import Plan
from ..planner.refine import refine
from ..runner.prepare import mount_store, open_run_store
from ..storage.lock import ProjectLock, acquire_project_lock
from ..storage.runstore import RunStore, StoreRef
from .retry import retry_unless_user_error

OWN_ERRORS = (UserInputError, NotBuiltError, TrainingError)  # sentences that say what to do


@task(name="mount-storage", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_unless_user_error)
def mount_storage_task(config: TrainingConfig, run_id: str) -> StoreRef:
    """Resolve the storage root (mounting Drive on Colab) and check it has room (nothing is created: the
    run's first write, its lock, makes the project folder).

    The only place a run resolves and probes its storage: the stages after it take the returned
    StoreRef. The run's config.json is written by the training session, once the run has passed its
    dataset and plan checks: a refused run leaves no configs/<run-id>/ without a line in runs.jsonl.
    `run_id` stays in the signature for the flow.
    """
    return mount_store(config, lambda note: get_run_logger().info(note)).ref()  # a logger only for Kaggle's note


def run_store(config: TrainingConfig, storage: StoreRef | None) -> RunStore:
    """The store the mount stage resolved; resolved here only for a task called on its own (tests, scripts)."""
    return storage.open() if storage is not None else open_run_store(config)


@task(name="record-run", retries=2, retry_delay_seconds=[5, 30])
def record_run_task(config: TrainingConfig, record: dict, error: BaseException | str | None = None,
                    storage: StoreRef | None = None) -> None:
    """Append this flow run to runs.jsonl, which outlives the Prefect database.

    `error` is what ended the run (the flow passes `sys.exc_info()[1]` from its `finally`): its one-line
    reason goes into the record as "error", and a failed session's own step count replaces the
    flow's placeholder, so `status` can say how far a failed run got and why.
    """
    run_store(config, storage).append_run(run_record(record, error))


def run_record(record: dict, error: BaseException | str | None) -> dict:
    record = dict(record)
    if error is None or error == "":
        return record
    if isinstance(error, str):
        record["error"] = one_line(error)
        return record
    session = getattr(error, "result", None)  # TrainingFailedError carries the failed session's result
    for key in ("steps_done", "total_steps"):
        if not record.get(key):
            # The flow's placeholder 0 is "unknown" unless the session said how far it got.
            record[key] = getattr(session, key, None)
    if not isinstance(error, Exception):  # Ctrl-C, a cancelled flow run: the trainer saved a state and stopped
        record["outcome"] = "interrupted"
        record["error"] = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"interrupted ({type(error).__name__})"
        return record
    said = str(error).strip()
    # Our own errors are sentences that say what to do; anything else needs its type to make sense.
    record["error"] = one_line(said if said and isinstance(error, OWN_ERRORS) else f"{type(error).__name__}: {said}".rstrip(": "))
    return record


def one_line(text: str) -> str:
    return " ".join(str(text).split())


@task(name="store-json", retries=2, retry_delay_seconds=[5, 30])
def store_json_task(config: TrainingConfig, rel_path: str, payload: dict, storage: StoreRef | None = None) -> None:
    """Publish a small JSON document (the plan, a report) into the run store."""
    run_store(config, storage).write_json(rel_path, payload)


# No cache and no retries: a lock is this run's alone, and a second try would find its own first one.
@task(name="lock-project", cache_policy=NO_CACHE)
def lock_project_task(storage: StoreRef, run_id: str) -> ProjectLock:
    """Take the project's lock (UserInputError naming the run that holds it) and keep its heartbeat going."""
    lock = acquire_project_lock(storage.open(), run_id)
    lock.start_heartbeat()
    return lock


@task(name="unlock-project", cache_policy=NO_CACHE)
def unlock_project_task(lock: ProjectLock) -> None:
    """Stop the heartbeat and remove the lock if it is still this run's (a lock left behind goes stale)."""
    lock.release()


@task(name="store-refined-plan", retries=2, retry_delay_seconds=[5, 30])
def store_refined_plan_task(config: TrainingConfig, plan: Plan, sec_per_step: float, steps_done: int,
                            storage: StoreRef | None = None) -> None:
    """plan.json with the run's measured rate in place of the table's estimate: the next session plans with it."""
    run_store(config, storage).write_json("plan.json", refine(plan, sec_per_step, steps_done).model_dump(mode="json"))
