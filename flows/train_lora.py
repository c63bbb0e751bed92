"""The resumable Anima LoRA flow: it reads like the pipeline, each stage a task."""

# No `from __future__ import annotations`: a flow served from its object (`train_lora.serve()`, a notebook
# user's way) is pickled by value into each run's process, with only the globals its body uses, so a
# string annotation "TrainingConfig" could not be resolved there and every run failed its parameter check.

import sys
import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, State

from ..config import TrainingConfig
from ..errors import speaking_by_default
from ..planner.guard import guard_for
from ..planner.preflight import check_supported, ensure_local_folders
from ..runner.prepare import dry_run_result
from ..runner.train import TrainingFailedError, new_run_id
from ..storage.runstore import StoreRef
from ..tasks.backend_files import backend_files_task
from ..tasks.dataset import prepare_dataset_task
from ..tasks.history import label_this_flow_run, mark_stale_runs_crashed_task
from ..tasks.models import download_models_task
from ..tasks.plan import plan_task
from ..tasks.resume import check_resume_task
from ..tasks.storage import (lock_project_task, mount_storage_task, record_run_task, store_json_task,
                             store_refined_plan_task, unlock_project_task)
from ..tasks.train import train_task
from ..trainer.registry import backend_for
from ..ui.artifacts import artifact_key
from ..ui.console import FOR_CONSOLE
from ..ui.summary import resume_advice, summary_markdown
from .turns import project_turn


def tell_how_to_resume(flow, flow_run, state) -> None:
    """on_crashed / on_cancellation: the training task's own cleanup has stopped the trainer and flushed
    the uploads by now (its `finally` blocks run on SIGTERM and interrupts); say how to go on."""
    flow_run_logger(flow_run, flow).warning(
        "run %s ended %s (%s); every state already uploaded is safe in storage: run the same command or "
        "cell again to resume from the newest one", flow_run.name, state.type.value.lower(), state.message or "-",
    )


@flow(name="train-anima-lora", log_prints=True, on_crashed=[tell_how_to_resume], on_cancellation=[tell_how_to_resume])
def train_lora(config: TrainingConfig, dry_run: bool = False) -> dict | State:
    """Validate, plan, download, train (resuming from storage) and publish one Anima LoRA.

    A session stopped before its end (deadline, SIGTERM) with its state saved ends Completed, named
    "Stopped", with the resume advice as the state's message; calling the flow returns the result dict
    either way."""
    # A deployment's run names a setting by this flow's parameter (config.learning_rate); the CLI and a
    # notebook have chosen their own spelling (--learning-rate, learning_rate) before they call it.
    # A second deployment run of this project waits here for the first to end (flows/turns.py).
    with speaking_by_default("flow"), project_turn(config.project_name, storage=config.storage, needed=not dry_run):
        return _train_lora(config, dry_run)


def _train_lora(config: TrainingConfig, dry_run: bool) -> dict | State:
    logger = get_run_logger()
    check_supported(config)
    ensure_local_folders(config)
    run_id = new_run_id()
    started = time.time()
    label_this_flow_run(run_id)  # host, pid and run id: what a later run judges this one by if it dies

    # Where the run lives, what it trains on, and whether the saved state may be continued with these
    # settings (judged from its manifest): all fail fast, before any large download. The storage is
    # resolved and probed here only; the stages after it open `storage`.
    storage = mount_storage_task(config, run_id)
    store_root = storage.open().root
    mark_stale_runs_crashed_task(config.project_name)  # after the mount: it reads the earlier runs' storage locks
    report = prepare_dataset_task(config)
    resume = check_resume_task(config, report, storage)
    plan = plan_task(config, report, resume.step)
    if dry_run:
        logger.info("dry run: %s; stopping before the model download and training", resume.would(plan.steps.total_steps))
        result = dry_run_result(run_id, store_root, report, plan, resume)
        if backend_for(config.trainer).preview_key is not None:  # sd-scripts: its TOML files and command
            key, files = backend_files_task(config, report, plan, run_id, storage)
            result[key] = files
        return result

    logger.info(plan.to_text(), extra=FOR_CONSOLE)  # the quiet console of a CLI run shows the plan too
    # One run per project from here on: a second run would resume from this one's half-written states.
    lock = lock_project_task(storage, run_id)
    try:
        return _download_and_train(config, report, plan, run_id, started, storage)
    finally:
        unlock_project_task(lock)


def _download_and_train(config: TrainingConfig, report, plan, run_id: str, started: float, storage: StoreRef) -> dict | State:
    models = download_models_task(config)
    store_json_task(config, "plan.json", plan.model_dump(mode="json"), storage)
    # Saves a state and stops the trainer before the session's end, whatever the overrun choice.
    guard = guard_for(plan.deadline_ts, final_work_s=plan.extras.last_sampling_s if plan.extras else 0.0)
    result = {"run_id": run_id, "outcome": "failed", "steps_done": 0}
    try:
        result = train_task(config, report, models, run_id, guard, plan, storage)
    except Exception as exc:
        # The run fails, but what it reached is worth seeing first: the summary says why (the train
        # task has published the loss so far). A Ctrl-C or a crash is not caught: its hooks speak.
        reached = exc.result.to_dict() if isinstance(exc, TrainingFailedError) and exc.result is not None else result
        result = {**reached, "outcome": "failed", "reason": str(exc), "elapsed_s": time.time() - started}
        try:
            publish_summary(config, result, storage)
        except Exception as publish_error:  # noqa: BLE001 - the training error is the one to raise
            get_run_logger().warning("could not publish the failed run's summary: %s", publish_error)
        raise
    finally:
        record_run_task(config, {
            "run_id": run_id, "flow_run_id": str(flow_run.get_id() or ""), "started": started, "ended": time.time(),
            "outcome": result.get("outcome"), "steps_done": result.get("steps_done"),
            "total_steps": result.get("total_steps"), "trainer": config.trainer,
            "validation": result.get("validation"), "best_epoch": result.get("best_epoch"),
        }, error=sys.exc_info()[1], storage=storage)  # the exception ending the run, if any: `status` shows it as the reason
    if result.get("sec_per_step"):
        store_refined_plan_task(config, plan, result["sec_per_step"], result.get("steps_done") or 0, storage)
    result["elapsed_s"] = time.time() - started
    publish_summary(config, result, storage)
    if result["outcome"] == "stopped":
        advice = resume_advice(result)
        get_run_logger().warning(advice)
        # Completed (nothing failed, the state is safe) but named for what happened, with the way on in
        # its message: the run list tells a finished LoRA from a session that must be resumed. A caller
        # of the flow still gets the result dict (Prefect returns the state's data).
        return Completed(name="Stopped", message=advice, data=result)
    return result


def publish_summary(config: TrainingConfig, result: dict, storage: StoreRef) -> None:
    create_markdown_artifact(
        markdown=summary_markdown(config, result, storage.open().root), key=artifact_key("summary", config.project_name),
        description="Anima LoRA run summary",
    )
