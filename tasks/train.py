"""The training task: a thin wrapper; the session logic lives in runner/train.py."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ..config import TrainingConfig
from ..models.download import ModelPaths
from ..planner.plan import Plan
from ..runner.train import TrainingFailedError, run_training_session
from ..storage.runstore import StoreRef
from ..ui.artifacts import artifact_key, image_markdown
from ..ui.console import FOR_CONSOLE
from ..ui.loss_chart import SIZE as CHART_SIZE, loss_chart_png, loss_table
from ..ui.prefect_progress import PrefectProgress
from ..trainer.events import Samples
from ..ui.progress import ConsoleProgress
from ..ui.samples import samples_markdown, show_in_notebook
from .storage import run_store

CHART_MAX_SIDE = max(CHART_SIZE)  # the chart as drawn: small already (tens of kB), and its labels stay sharp


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
        if isinstance(event, Samples):
            publish_samples(event, config)

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
    except TrainingFailedError as exc:
        # A failed or diverged run's loss so far is what tells why: publish it before the task fails.
        if exc.result is not None:
            try:
                publish_loss_chart(store, config, exc.result.losses, run_id, validation=exc.result.validation)
            except Exception as publish_error:  # noqa: BLE001 - the training error is the one to raise
                logger.warning("could not publish the loss of the failed run: %s", publish_error)
        raise
    finally:
        cell.close()
    publish_loss_chart(store, config, result.losses, run_id, validation=result.validation)
    return result.to_dict()


def publish_samples(event: Samples, config: TrainingConfig) -> None:
    """A sample grid as a markdown artifact that shows the image, and in the notebook cell; never fails the run."""
    try:
        create_markdown_artifact(markdown=samples_markdown(event, config.project_name),
                                 key=artifact_key("samples", config.project_name),
                                 description=f"sample images at step {event.step}")  # fmt: skip
        show_in_notebook(event)
    except Exception as exc:  # noqa: BLE001 - a display or API hiccup must not stop the training it reports on
        get_run_logger().warning("could not show the sample grid of step %d: %s", event.step, exc)


def job_fields(models: ModelPaths, plan: Plan | None) -> dict:
    """What a backend's job takes from the models and plan stages beyond the config (trainer/backend.py TrainJob)."""
    single_files = {"dit": models.dit, "text_encoder": models.text_encoder, "vae": models.vae}
    fields: dict = {name: str(path) for name, path in single_files.items() if path is not None}
    if plan is not None:
        fields.update(precision=plan.precision, total_steps=plan.steps.total_steps, gpu_memory_gib=plan.memory.available_gib)
    return fields


def publish_loss_chart(store, config: TrainingConfig, losses: list[tuple[int, float]], run_id: str, *,
                       validation: list[tuple[int, float]] | None = None) -> None:
    """The loss as a chart the UI shows (a PNG embedded in a markdown artifact, also kept in the run
    store) and as a table artifact; `validation` adds the held-out loss to the chart."""
    if not losses and not validation:
        return
    png = loss_chart_png(losses, config.resolved_work_dir() / "runs" / run_id / "loss.png", title=config.project_name,
                         validation=validation)
    published = store.publish_file(png, f"logs/{run_id}-loss.png")
    # Embedded, not linked: a file:// link is text the browser will not open, and nothing on another machine.
    create_markdown_artifact(
        markdown=f"{image_markdown(png, f'{config.project_name} loss', max_side=CHART_MAX_SIDE)}\n\n"
                 f"The PNG is kept in the run's storage: `{published.path}`",
        key=artifact_key("loss-chart", config.project_name), description="training loss over steps (chart)",
    )
    if losses:
        create_table_artifact(table=loss_table(losses), key=artifact_key("loss", config.project_name),
                              description="training loss over steps")
