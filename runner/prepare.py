"""The stages before any download, as plain functions: the flow's tasks wrap them, and `train --dry-run`
calls them directly (no Prefect server, no torch), so both decide the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import TrainingConfig, cache_root
from ..core.caption_tokens import has_tokenizers
from ..core.dataset_report import DatasetError, DatasetReport
from ..core.validation_split import split_off, with_validation_set
from ..errors import setting
from ..dataset.intake import prepare_dataset
from ..planner.plan import Plan, enforce_plan, make_plan
from ..platforms.detect import PlatformInfo, detect_platform
from ..platforms.kaggle import import_previous_run_store, on_kaggle
from ..storage import RunStore, resolve_storage
from ..storage.capacity import check_capacity
from ..trainer.backend import TrainJob
from ..trainer.registry import backend_for
from .resume import ResumePoint, judge_resume

Log = Callable[[str], None]


def open_run_store(config: TrainingConfig) -> RunStore:
    """The project's store, checked to be creatable but not created: the first file written creates its
    folders, so a dry run or a run refused before training leaves no empty folder in storage."""
    return RunStore(resolve_storage(config.storage, create=False), config.project_name)


def existing_store_bytes(store: RunStore) -> int:
    """What the project already holds (a resumed run reuses that space)."""
    try:
        return sum(store.fs.du(store.root, total=False).values()) if store.fs.exists(store.root) else 0
    except Exception:  # noqa: BLE001 - a size we cannot read just means "assume nothing is there yet"
        return 0


def mount_store(config: TrainingConfig, log: Log | None = None) -> RunStore:
    """Resolve the storage root (mounting Drive on Colab) and check it has room; the project folder is made
    by the first file the run writes (its lock), not here."""
    store = open_run_store(config)
    check_capacity(store.location, config, existing_bytes=existing_store_bytes(store))
    if on_kaggle() and store.location.is_local:
        note = import_previous_run_store(store)
        if note and log is not None:
            log(note)
    return store


def dataset_report(config: TrainingConfig) -> DatasetReport:
    """Fetch, extract and validate the dataset with the config's bucket settings.

    Long captions are counted with the tokenizers of the model that trains: models_dir's, else the
    downloaded base_model's. A models_dir without a tokenizer folder is not refused here: the models
    stage names it, after the resume check (a refused resume must come first).
    """
    kwargs = config.model_dump(include={"resolution", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "repeats",
                                        "base_model"})
    models_dir = Path(config.models_dir).expanduser() if config.models_dir else None
    usable = models_dir if models_dir is not None and has_tokenizers(models_dir) else None
    report = prepare_dataset(config.dataset, config.resolved_work_dir(), models_dir=usable, **kwargs)
    # The held-out images leave the report here, before anything counts steps from it.
    if config.validation_dataset:
        try:
            held = prepare_dataset(config.validation_dataset, config.resolved_work_dir(), models_dir=usable, **kwargs)
        except DatasetError as exc:
            raise DatasetError(f"{setting('validation_dataset')}: {exc}", exc.report, field="validation_dataset") from exc
        return with_validation_set(report, held)
    return split_off(report, config.validation_split, config.seed)


def plan_run(config: TrainingConfig, report: DatasetReport, steps_done: int = 0, platform: PlatformInfo | None = None) -> Plan:
    """The plan for this machine (or `platform`) from `steps_done` on; not enforced, so the caller can show it first."""
    platform = platform or detect_platform(session_budget_hours=config.session_budget_hours)
    return make_plan(config, report.samples_per_bucket(), platform, steps_done=steps_done)


def backend_files(config: TrainingConfig, report: DatasetReport, plan: Plan, run_id: str,
                  store: RunStore) -> tuple[str, dict] | None:
    """(the dry-run result's key, the backend's own files for this run written into the run store and the
    launch command), e.g. sd-scripts' two TOML files; None for a backend without any. Models not downloaded yet are named where
    `anima-lora models download` puts them."""
    backend = backend_for(config.trainer)
    if backend.preview_key is None:
        return None
    from ..core import known_models  # noqa: PLC0415 - only for a dry run of a backend with files
    from ..models.download import ready_models  # noqa: PLC0415

    paths = ready_models(config.base_model, config.trainer)
    fallback = cache_root() / "models" / known_models.SINGLE_FILE_REPO
    work = config.resolved_work_dir() / config.trainer / run_id
    job = TrainJob(
        config=config.model_dump(mode="json"), items=[], dataset_fingerprint=report.fingerprint, run_id=run_id,
        models_dir=str(paths.diffusers_dir) if paths and paths.diffusers_dir else None,
        work_dir=str(config.resolved_work_dir()), run_dir=str(work), output_dir=str(work / "output"),
        dit=str(paths.dit if paths and paths.dit else fallback / known_models.base_model(config.base_model).dit.filename),
        text_encoder=str(paths.text_encoder if paths and paths.text_encoder else fallback / known_models.TEXT_ENCODER.filename),
        vae=str(paths.vae if paths and paths.vae else fallback / known_models.VAE.filename),
        precision=plan.precision, total_steps=plan.steps.total_steps,
    )
    preview = backend.preview(job, report)
    result = {"command": preview.command}
    for name, path in preview.files.items():
        store.publish_file(path, f"configs/{run_id}/{path.name}")
        result[name] = store.path("configs", run_id, path.name)
    result["models_note"] = "" if paths else (
        f" (model paths are where `anima-lora models download --backend {config.trainer}` puts them)")
    return backend.preview_key, result


def dry_run_result(run_id: str, storage: str, report: DatasetReport, plan: Plan, resume: ResumePoint) -> dict:
    """What a dry run returns, from the flow and from the CLI alike."""
    return {
        "run_id": run_id, "outcome": "dry-run", "storage": storage, "trainable_images": report.trainable_count,
        "plan": plan.model_dump(mode="json"),
        "resume": {"would": resume.would(plan.steps.total_steps), "step": resume.step,
                   "total_steps": resume.total_steps or plan.steps.total_steps, "changes": resume.changes},
    }


def dry_run(config: TrainingConfig, run_id: str, log: Log = print) -> dict:
    """Everything `train` does before the model download, without a Prefect server: storage, dataset,
    the resume judgement, the plan (and the sd-scripts files). Nothing is downloaded or trained.

    Raises:
        ResumeRefusedError: the newest state in storage cannot be continued with this config.
        UserInputError: bad storage, dataset or settings; a plan that stops.
    """
    store = mount_store(config, log)
    report = dataset_report(config)
    log(f"dataset: {report.summary()}")
    if report.problems:
        log(f"{len(report.problems)} file(s) of the dataset are not trained; `anima-lora validate {config.dataset}` lists them")
    resume = judge_resume(store, config, report.fingerprint)
    for change in resume.changes:
        log(f"warning: {change}")
    plan = plan_run(config, report, steps_done=resume.step)
    enforce_plan(plan)
    result = dry_run_result(run_id, store.root, report, plan, resume)
    files = backend_files(config, report, plan, run_id, store)
    if files is not None:
        result[files[0]] = files[1]
    return result
