"""One training session with any backend: resume point, subprocess, live sync, final publish.

The flow's train task is a thin wrapper around `run_training_session`; everything here is plain
Python so the tests and the CLI can run it without a Prefect server.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import TrainingConfig
from ..core.dataset_report import DatasetReport
from ..core.lora_files import kohya_name, lora_file_name
from ..core.processes import start_process_group
from ..core.train_items import TrainItem
from ..errors import TrainingError, audience_env, render, setting
from ..storage.drive import remount_on_drop
from ..storage.runstore import RunStore
from ..trainer.backend import EXIT_STOPPED, TrainJob
from ..trainer.events import Event, Validation
from ..trainer.registry import backend_for
from ..trainer.sample_plan import BASE_SAMPLES_DIR, STORE_BASE_SAMPLES
from .resume import ResumePoint, find_resume_point, state_extra
from .supervise import Outcome, supervise
from .sync import CheckpointSyncer


class TrainingFailedError(TrainingError):
    """The trainer exited with an error; the message carries its last words and the log's place.

    `result` is the failed session (the step it reached, its total), for the run history.
    """

    def __init__(self, message: str, result: "SessionResult | None" = None):
        super().__init__(message)
        self.result = result


@dataclass
class SessionResult:
    run_id: str
    outcome: str  # "completed" | "stopped" | "failed"
    steps_done: int
    total_steps: int | None
    start_step: int
    final_lora: str | None = None
    lora_bytes: int | None = None
    local_lora: str | None = None
    last_loss: float | None = None
    sec_per_step: float | None = None  # this session's average, without the first interval's warm-up when it can
    timed_steps: int = 0  # the steps that average covers
    warmup_steps: int = 0  # the first steps it leaves out (compile, caches, allocator warm-up)
    stop_reason: str | None = None
    unsynced_steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    resume_note: str = ""
    samples: list[str] = field(default_factory=list)  # this session's sample grids, as stored
    sampling_errors: list[tuple[int, str]] = field(default_factory=list)  # (step, why) of each failed sampling point
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss) of this session's epochs
    best_epoch: dict | None = None  # best_epoch_record(): the LoRA to use and why
    already_complete: bool = False  # the saved state was the last step: nothing was trained or rewritten

    def to_dict(self) -> dict:
        return asdict(self)


def run_training_session(
    config: TrainingConfig,
    *,
    items: list[TrainItem],
    dataset_fingerprint: str,
    models_dir: Path | None,
    store: RunStore,
    work_dir: Path,
    run_id: str,
    should_stop: Callable[[float | None], bool] | None = None,
    on_event: Callable[[Event, Outcome], None] | None = None,
    command: list[str] | None = None,
    log: Callable[[str], None] = print,
    flush_timeout_s: float = 600.0,
    job_fields: Mapping[str, Any] | None = None,
    report: DatasetReport | None = None,
    warn: Callable[[str], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> SessionResult:
    """Resume from storage, train in a subprocess, sync as checkpoints land, publish the final LoRA.

    The backend is the registry's for `config.trainer`; `job_fields` are TrainJob fields the caller
    knows beyond these arguments (single-file models, the plan's numbers), `report` the dataset the
    backend's `prepare` may stage. `log` gets the run's notes; `warn` its problems (failed uploads);
    `announce` what the user must see even on a quiet console: where training starts. Both default to `log`.
    """
    backend = backend_for(config.trainer)
    warn, announce = warn or log, announce or log
    fingerprint = config.fingerprint(dataset_fingerprint)
    fields = config.training_fields()
    # Written here, not when storage is mounted: a run refused for its dataset or plan leaves no config behind.
    store.write_json(f"configs/{run_id}/config.json", config.model_dump(mode="json"))
    resume = find_resume_point(
        store, fingerprint=fingerprint, training_fields=fields, dataset_fingerprint=dataset_fingerprint,
        download_to=work_dir / "resume", restart=config.restart,
    )
    announce(resume.describe())
    if resume.complete:
        finished = _already_complete(store, resume, fingerprint, run_id, announce)
        if finished is not None:
            return finished
    run_dir = work_dir / "runs" / run_id
    output_dir = run_dir / "output"
    events_path = run_dir / "events.jsonl"
    if command is None:
        job = TrainJob(
            config=config.model_dump(mode="json"), items=[item.to_json() for item in items],
            models_dir=str(models_dir) if models_dir else None, work_dir=str(work_dir), output_dir=str(output_dir),
            resume_state=str(resume.local_dir) if resume.local_dir else None, dataset_fingerprint=dataset_fingerprint,
            run_id=run_id, run_dir=str(run_dir), resume_step=resume.step,
            validation_items=[item.to_json() for item in report.validation_items()] if report is not None else [],
            validation_source=report.held_out_source if report is not None else "",
        )
        job = backend.prepare(replace(job, **(job_fields or {})), report)
        run_dir.mkdir(parents=True, exist_ok=True)
        command = backend.command(job.save(run_dir / "job.json"), events_path)
    syncer = CheckpointSyncer(
        store, fingerprint=fingerprint, state_extra=state_extra(fields, dataset_fingerprint),
        keep_last_states=config.keep_last_states, keep_last_epochs=config.save_last_n_epochs, log=warn,
        on_storage_error=remount_on_drop(store.root) if store.location.is_local else None,
    )
    log_path = run_dir / "trainer.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **audience_env()}  # its messages spell settings for our reader
    fetch_base_samples(store, work_dir, warn)
    proc = start_process_group(command, log_path=log_path, env=env)
    try:
        outcome = supervise(proc, events_path, syncer=syncer, should_stop=should_stop, on_event=on_event)
    finally:
        flushed = syncer.close(timeout=flush_timeout_s)
        _upload_log(store, log_path, run_id, warn)
    result = _session_result(run_id, outcome, resume, syncer, store, flushed)
    if outcome.validation:
        result.best_epoch = best_epoch_record(outcome.validation[-1], config.project_name, config.max_train_epochs)
    if result.outcome == "failed":
        raise TrainingFailedError(_failure_message(outcome, log_path), result)
    return result


def _already_complete(store: RunStore, resume: ResumePoint, fingerprint: str, run_id: str, log) -> SessionResult | None:
    """The result of a run whose saved state is its last step and whose final LoRA is in storage; None
    when that LoRA must be written again from the state (missing, unreadable, or another run's)."""
    rel = f"checkpoints/{store.checkpoint_name()}"
    meta = store.lora_metadata(rel)
    if meta is None and not store.exists(rel):
        log(f"training is complete but its final LoRA is missing from storage: writing it again from the state "
            f"at step {resume.step} (no training)")
        return None
    if meta is None or not _lora_of(meta, fingerprint, resume.step):
        # Not this state's LoRA (or not a LoRA at all): kept in the archive, never overwritten.
        moved = store.archive([r for r in (rel, kohya_name(rel)) if store.exists(r)])
        log(f"the final LoRA in storage is not the one of the state at step {resume.step}: moved it to "
            f"{moved[rel]}; writing it again from the state (no training)")
        return None
    path = store.path(rel)
    log(render(f"its final LoRA is in storage: {path}. Nothing to train or write; {setting('restart')} trains again "
               "from step 0 and moves this run's states and LoRAs to archive/"))
    return SessionResult(
        run_id=run_id, outcome="completed", steps_done=resume.step, total_steps=resume.total_steps,
        start_step=resume.step, final_lora=path, lora_bytes=store.fs.size(path), resume_note=resume.describe(),
        already_complete=True,
    )


def _lora_of(meta: dict[str, str], fingerprint: str, step: int) -> bool:
    """Whether a final LoRA's metadata says it was exported from this run's state at `step`. The native
    trainer records its config fingerprint and step; a LoRA without them (sd-scripts) is taken as is."""
    if "ss_config_fingerprint" not in meta:
        return True
    return meta["ss_config_fingerprint"] == fingerprint and meta.get("ss_steps") in (None, str(step))


def _session_result(run_id, outcome: Outcome, resume: ResumePoint, syncer, store: RunStore, flushed: bool) -> SessionResult:
    if outcome.completed:
        status = "completed"
    elif outcome.stopped or outcome.returncode == EXIT_STOPPED:
        status = "stopped"
    else:
        status = "failed"
    final = store.path("checkpoints", store.checkpoint_name()) if status == "completed" and flushed else None
    lora_bytes = store.fs.size(final) if final and store.fs.exists(final) else None
    return SessionResult(
        run_id=run_id, outcome=status, steps_done=outcome.step, total_steps=outcome.total_steps,
        start_step=resume.step, final_lora=final, lora_bytes=lora_bytes, local_lora=outcome.final_lora, last_loss=outcome.last_loss,
        sec_per_step=outcome.average_sec_per_step, stop_reason=outcome.stop_reason,
        timed_steps=outcome.timed_steps or (outcome.warmup[0] if outcome.warmup else 0),
        warmup_steps=outcome.warmup[0] if outcome.timed_steps and outcome.warmup else 0,
        unsynced_steps=syncer.steps_at_risk(outcome.step) if status != "completed" else (0 if flushed else outcome.step),
        losses=outcome.losses, resume_note=resume.describe(),
        samples=[store.path("samples", Path(p).name) for p in outcome.samples], sampling_errors=outcome.sampling_errors,
        validation=[(v.step, v.loss) for v in outcome.validation],
    )


def best_epoch_record(last: Validation, project: str, epochs: int) -> dict | None:
    """The epoch with the lowest validation loss so far (the trainer's record spans every session) and its
    LoRA file: the epoch's own, or the final LoRA when the last epoch is the best."""
    if last.best_epoch is None or last.best_loss is None:
        return None
    final = last.best_epoch >= epochs
    return {"epoch": last.best_epoch, "loss": last.best_loss, "file": lora_file_name(project, None if final else last.best_epoch),
            "set": f"{'held-out' if last.held_out else 'training subset'}, {last.images} image{'s' if last.images != 1 else ''}"}


def fetch_base_samples(store: RunStore, work_dir: Path, log) -> list[Path]:
    """Copy the base model's sample images stored by an earlier session into the work dir (the trainer's cache).

    They never change during a run, so a session on a fresh machine reuses them instead of sampling the
    base model again. A failure only costs that sampling, never the session.
    """
    local = Path(work_dir) / BASE_SAMPLES_DIR
    fetched = []
    try:
        for name in store.listdir(STORE_BASE_SAMPLES):
            if not (local / name).is_file():
                local.mkdir(parents=True, exist_ok=True)
                part = local / f".{name}.{os.getpid()}.part"
                store.fs.get_file(store.path(STORE_BASE_SAMPLES, name), str(part))
                os.replace(part, local / name)  # the trainer trusts any file there: never a partial one
                fetched.append(local / name)
    except Exception as exc:  # noqa: BLE001 - every storage backend's errors; the trainer samples them again
        log(f"could not fetch the stored base model samples ({exc}); they will be drawn again")
    return fetched


def _upload_log(store: RunStore, log_path: Path, run_id: str, log) -> None:
    if not log_path.exists():
        return
    try:
        store.publish_file(log_path, f"logs/{run_id}.log")
    except Exception as exc:  # noqa: BLE001 - the log is a convenience; never hide the run's real result
        log(f"could not store the trainer log ({exc}); it stays at {log_path}")


# What a trainer prints when the GPU went away under it (Colab/Kaggle reclaim, driver reset, Xid).
GPU_LOST_MARKERS = (
    "no CUDA GPUs are available", "CUDA error: unspecified launch failure", "CUDA driver initialization failed",
    "cudaErrorDevicesUnavailable", "CUDA error: an illegal memory access", "device-side assert", "Xid",
    "CUDA-capable device(s) is/are busy or unavailable", "CUDA error: uncorrectable ECC error",
)


def _failure_message(outcome: Outcome, log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.exists() else []
    tail = lines[-1] if lines else ""
    if any(marker in line for line in lines[-50:] for marker in GPU_LOST_MARKERS):
        return (
            f"the GPU was lost at step {outcome.step} ({tail}); the last saved state is in storage: run the same "
            "command again in a session with a working GPU to resume"
        )
    if outcome.error and outcome.error_kind in ("user", "diverged"):
        return f"{outcome.error} (full log: {log_path})"
    if not outcome.error and outcome.returncode is not None and outcome.returncode < 0:
        # Killed from outside: its last line is whatever it happened to print, not why it ended.
        reason = f"the trainer was killed by {_signal_name(-outcome.returncode)}"
        if outcome.returncode == -signal.SIGKILL:
            reason += " (sent by another process, or by the kernel when the machine ran out of RAM)"
    else:
        reason = outcome.error or tail or f"exit code {outcome.returncode}"
    return (
        f"training failed at step {outcome.step}: {reason} (full log: {log_path}); "
        "run the same command again to resume from the last saved state"
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid() % 10000:04d}"
