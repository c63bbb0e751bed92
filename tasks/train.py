"""The training task: a thin wrapper; the session logic lives in runner/train.py."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact

from ..config import TrainingConfig
from ..runner.train import run_training_session
from ..trainer.sdscripts.staging import stage_dataset
from ..ui.console import FOR_CONSOLE
from ..ui.loss_chart import loss_chart_png, loss_table
from ..ui.progress import ConsoleProgress
from .artifacts import artifact_key
from .progress import PrefectProgress
from ..storage.runstore import StoreRef
from .storage import run_store


# No retries: a failed session is resumed by running the flow again, from the state in storage.
@task(name="train")
def train_task(config: TrainingConfig, report, models, run_id: str, guard=None, plan=None,
               storage: StoreRef | None = None) -> dict:
    """Train (resuming from storage), sync checkpoints while training, return the session result."""
    logger = get_run_logger()
    # Checkpoints and the trainer's own lines are reported once, by the Prefect log (the cell and the UI alike).
    cell = ConsoleProgress(session_left=guard.remaining_s if guard is not None else None, echo_checkpoints=False,
                            echo_messages=False)
    prefect_progress = PrefectProgress(artifact_key("progress", config.project_name))

    def on_event(event, outcome):
        cell(event, outcome)
        prefect_progress(event, outcome)

    store = run_store(config, storage)
    try:
        result = run_training_session(
            config, items=report.train_items(), dataset_fingerprint=report.fingerprint,
            models_dir=Path(models.diffusers_dir) if getattr(models, "diffusers_dir", None) else None,
            store=store, work_dir=config.resolved_work_dir(), run_id=run_id,
            should_stop=guard.should_stop if guard is not None else None, on_event=on_event, log=logger.info,
            warn=logger.warning, announce=lambda line: logger.info(line, extra=FOR_CONSOLE),
            sd_scripts=sd_scripts_spec(config, report, models, plan) if config.trainer == "sd-scripts" else None,
        )
    finally:
        cell.close()
    publish_loss_chart(store, config, result.losses, run_id)
    return result.to_dict()


def sd_scripts_spec(config: TrainingConfig, report, models, plan) -> dict:
    """What the sd-scripts entry needs beyond the config: the staged images, single-file models, the plan's numbers."""
    gpu = getattr(plan, "memory", None)
    staged = stage_dataset(report, config.resolved_work_dir())  # kohya reads only what the validator accepted
    return {
        "image_dir": str(staged.root),
        "subsets": staged.subsets,
        "dit": str(models.dit) if getattr(models, "dit", None) else None,
        "qwen3": str(models.text_encoder) if getattr(models, "text_encoder", None) else None,
        "vae": str(models.vae) if getattr(models, "vae", None) else None,
        "mixed_precision": plan.precision if plan is not None else "bf16",
        "total_steps": plan.steps.total_steps if plan is not None else None,
        "gpu_memory_gib": getattr(gpu, "available_gib", None),
    }


def publish_loss_chart(store, config: TrainingConfig, losses: list[tuple[int, float]], run_id: str) -> None:
    """The loss as a PNG in the run store (linked) and as a table artifact the UI can show."""
    if not losses:
        return
    png = loss_chart_png(losses, config.resolved_work_dir() / "runs" / run_id / "loss.png", title=config.project_name)
    published = store.publish_file(png, f"logs/{run_id}-loss.png")
    link = published.path if "://" in published.path else Path(published.path).as_uri()
    create_link_artifact(link=link, link_text="loss chart (PNG)", key=artifact_key("loss-chart", config.project_name))
    create_table_artifact(table=loss_table(losses), key=artifact_key("loss", config.project_name),
                          description="training loss over steps")
