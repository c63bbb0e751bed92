"""The training task: a thin wrapper; the session logic lives in runner/train.py."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact

from ..config import TrainingConfig
from ..models.download import ModelPaths
from ..planner.plan import Plan
from ..runner.train import run_training_session
from ..storage.runstore import StoreRef
from ..ui.artifacts import artifact_key
from ..ui.console import FOR_CONSOLE
from ..ui.loss_chart import loss_chart_png, loss_table
from ..ui.prefect_progress import PrefectProgress
from ..ui.progress import ConsoleProgress
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
            models_dir=models.diffusers_dir,
            store=store, work_dir=config.resolved_work_dir(), run_id=run_id,
            should_stop=guard.should_stop if guard is not None else None, on_event=on_event, log=logger.info,
            warn=logger.warning, announce=lambda line: logger.info(line, extra=FOR_CONSOLE),
            job_fields=job_fields(models, plan), report=report,
        )
    finally:
        cell.close()
    publish_loss_chart(store, config, result.losses, run_id)
    return result.to_dict()


def job_fields(models: ModelPaths, plan: Plan | None) -> dict:
    """What a backend's job takes from the models and plan stages beyond the config (trainer/backend.py TrainJob)."""
    single_files = {"dit": models.dit, "text_encoder": models.text_encoder, "vae": models.vae}
    fields: dict = {name: str(path) for name, path in single_files.items() if path is not None}
    if plan is not None:
        fields.update(precision=plan.precision, total_steps=plan.steps.total_steps, gpu_memory_gib=plan.memory.available_gib)
    return fields


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
