"""The training task: a thin wrapper; the session logic lives in runner/train.py."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from ..config import TrainingConfig
from ..runner.train import run_training_session
from ..ui.progress import TrainingProgress
from .artifacts import artifact_key
from .progress import PrefectProgress
from .storage import open_run_store


# No retries: a failed session is resumed by running the flow again, from the state in storage.
@task(name="train")
def train_task(config: TrainingConfig, report, models, run_id: str, guard=None) -> dict:
    """Train (resuming from storage), sync checkpoints while training, return the session result."""
    logger = get_run_logger()
    cell = TrainingProgress(session_left=guard.remaining_s if guard is not None else None)
    prefect_progress = PrefectProgress(artifact_key("progress", config.project_name))

    def on_event(event, outcome):
        cell(event, outcome)
        prefect_progress(event, outcome)

    try:
        result = run_training_session(
            config, items=report.train_items(), dataset_fingerprint=report.fingerprint,
            models_dir=Path(models.diffusers_dir) if getattr(models, "diffusers_dir", None) else None,
            store=open_run_store(config), work_dir=config.resolved_work_dir(), run_id=run_id,
            should_stop=guard.should_stop if guard is not None else None, on_event=on_event, log=logger.info,
        )
    finally:
        cell.close()
    return result.to_dict()
