"""Prefect tasks for the run store: mount it, record the run's config, keep the run history."""

from __future__ import annotations

import json

from prefect import get_run_logger, task

from ..config import TrainingConfig
from ..platforms.kaggle import import_previous_run_store, on_kaggle
from ..storage import RunStore, resolve_storage
from ..storage.capacity import check_capacity
from .retry import retry_unless_user_error


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
    """Resolve the storage root (mounting Drive on Colab), check it has room, create the project folder."""
    store = open_run_store(config)
    store.fs.makedirs(store.root, exist_ok=True)
    check_capacity(store.location, config, existing_bytes=existing_store_bytes(store))
    if on_kaggle() and store.location.is_local:
        note = import_previous_run_store(store)
        if note:
            get_run_logger().info(note)
    store.write_bytes(f"configs/{run_id}/config.json", json.dumps(config.model_dump(mode="json"), indent=2).encode())
    return store.root


@task(name="record-run", retries=2, retry_delay_seconds=[5, 30])
def record_run_task(config: TrainingConfig, record: dict) -> None:
    """Append this flow run to runs.jsonl, which outlives the Prefect database."""
    open_run_store(config).append_run(record)


@task(name="store-json", retries=2, retry_delay_seconds=[5, 30])
def store_json_task(config: TrainingConfig, rel_path: str, payload: dict) -> None:
    """Publish a small JSON document (the plan, a report) into the run store."""
    open_run_store(config).write_json(rel_path, payload)
