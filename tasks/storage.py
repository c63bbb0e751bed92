"""Prefect tasks for the run store: mount it, record the run's config, keep the run history."""

from __future__ import annotations

from prefect import get_run_logger, task

from ..config import TrainingConfig
from ..errors import NotBuiltError, TrainingError, UserInputError
from ..runner.prepare import mount_store, open_run_store
from ..storage.runstore import RunStore, StoreRef
from .retry import retry_unless_user_error

OWN_ERRORS = (UserInputError, NotBuiltError, TrainingError)  # sentences that say what to do


@task(name="mount-storage", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_unless_user_error)
def mount_storage_task(config: TrainingConfig, run_id: str) -> StoreRef:
    """Resolve the storage root (mounting Drive on Colab), check it has room, create the project folder.

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
