"""A backend's own files in the flow: the dry run writes them (sd-scripts: both TOML files) and shows the exact command."""

from __future__ import annotations

from prefect import get_run_logger, task

from ..config import TrainingConfig
from ..runner.prepare import backend_files
from ..storage.runstore import StoreRef
from .storage import run_store


@task(name="backend-configs", task_run_name="{config.trainer}-configs")
def backend_files_task(config: TrainingConfig, report, plan, run_id: str,
                       storage: StoreRef | None = None) -> tuple[str, dict] | None:
    """Render and store the backend's files for this run and return them with the launch command (None: it has none)."""
    files = backend_files(config, report, plan, run_id, run_store(config, storage))
    if files is not None:
        get_run_logger().info("%s command%s:\n%s", config.trainer, files[1]["models_note"], files[1]["command"])
    return files
