"""Prefect tasks for the run store: mount it, record the run's config, keep the run history."""

from __future__ import annotations

from prefect import get_run_logger, task

from ..config import TrainingConfig
from ..errors import NotBuiltError, UserInputError
from ..platforms.kaggle import import_previous_run_store, on_kaggle
from ..storage import RunStore, resolve_storage
from ..storage.capacity import check_capacity
from ..runner.train import TrainingFailedError
from .retry import retry_unless_user_error

OWN_ERRORS = (UserInputError, NotBuiltError, TrainingFailedError)


def open_run_store(config: TrainingConfig) -> RunStore:
    return RunStore(resolve_storage(config.storage), config.project_name)


def existing_store_bytes(store: RunStore) -> int:
    """What the project already holds (a resumed run reuses that space)."""
    try:
        return sum(store.fs.du(store.root, total=False).values()) if store.fs.exists(store.root) else 0
    except Exception:  # noqa: BLE001 - a size we cannot read just means "assume nothing is there yet"
        return 0


@task(name="mount-storage", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_unless_user_error)
def mount_storage_task(config: TrainingConfig, run_id: str) -> str:
    """Resolve the storage root (mounting Drive on Colab), check it has room, create the project folder.

    The run's config.json is written by the training session, once the run has passed its dataset and
    plan checks: a refused run leaves no configs/<run-id>/ without a line in runs.jsonl. `run_id` stays
    in the signature for the flow.
    """
    store = open_run_store(config)
    store.fs.makedirs(store.root, exist_ok=True)
    check_capacity(store.location, config, existing_bytes=existing_store_bytes(store))
    if on_kaggle() and store.location.is_local:
        note = import_previous_run_store(store)
        if note:
            get_run_logger().info(note)
    return store.root


@task(name="record-run", retries=2, retry_delay_seconds=[5, 30])
def record_run_task(config: TrainingConfig, record: dict, error: BaseException | str | None = None) -> None:
    """Append this flow run to runs.jsonl, which outlives the Prefect database.

    `error` is what ended the run (the flow passes `sys.exc_info()[1]` from its `finally`): its one-line
    reason goes into the record as "error", and a failed session's own step count replaces the
    flow's placeholder, so `status` can say how far a failed run got and why.
    """
    open_run_store(config).append_run(run_record(record, error))


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
def store_json_task(config: TrainingConfig, rel_path: str, payload: dict) -> None:
    """Publish a small JSON document (the plan, a report) into the run store."""
    open_run_store(config).write_json(rel_path, payload)
