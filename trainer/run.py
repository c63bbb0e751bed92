"""The native trainer's entry: run_training(job) in-process, or `python -m anima_lora_flow.trainer` as a subprocess."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.dataset.items import TrainItem
from anima_lora_flow.ui.progress import epoch_position

from .cache import build_cache
from .components import build_transformer, check_models_dir, speed_up_transformer
from .data import build_sampler
from .events import Event, EventSink, emit
from .lora import build_lora_model, load_adapter_state_dict, lora_parameters
from .loop import (
    Session,
    TrainResult,
    build_accelerator,
    build_optimizer,
    build_scheduler,
    resolve_precision,
    train,
    weight_dtype,
)
from .state import (
    OPTIMIZER_KEY,
    PROGRESS_FILE,
    RNG_KEY,
    SCALER_KEY,
    SCHEDULER_KEY,
    TrainingProgress,
    check_resume,
    load_state,
    restore_rng,
)

__all__ = ["TrainJob", "TrainResult", "run_training", "plan_steps"]

log = logging.getLogger("anima_lora_flow.trainer")


@dataclass
class TrainJob:
    """Everything one training run needs, JSON-serialisable (the subprocess reads it from a file)."""

    config: dict[str, Any]  # TrainingConfig fields
    items: list[dict[str, Any]]  # TrainItem.to_json() records
    models_dir: str  # a Diffusers-format Anima folder
    work_dir: str  # local scratch: the caches live here
    output_dir: str  # local disk: LoRAs and state folders land here
    resume_state: str | None = None  # a state folder to continue from
    dataset_fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainJob":
        return cls(**data)

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "TrainJob":
        return cls.from_json(json.loads(Path(path).read_text()))


def plan_steps(items: list[TrainItem], cfg: TrainingConfig) -> dict[str, int]:
    """Total optimizer steps, steps per epoch and epochs, by the same functions as the planner."""
    sampler = build_sampler(items, cfg.batch_size, cfg.micro_batches_per_step, cfg.seed)
    per_epoch = sampler.steps_per_epoch
    return {"total_steps": per_epoch * cfg.max_train_epochs, "steps_per_epoch": per_epoch, "epochs": cfg.max_train_epochs}


def run_training(
    job: TrainJob,
    sink: EventSink | None = None,
    stop_requested: Callable[[], bool] | None = None,
    show_progress: bool = False,
) -> TrainResult:
    """Cache, build, (resume,) train and export; events go to `sink`. See trainer/loop.py for the loop."""
    cfg = TrainingConfig(**job.config)
    items = [TrainItem.from_json(item) for item in job.items]
    if not items:
        raise ValueError("the job has no training items; check the dataset stage's output")
    models_dir = check_models_dir(Path(job.models_dir))
    forward = _EventLogHandler(sink)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)  # so INFO lines reach the sink; the root logger still filters the console
    log.addHandler(forward)
    try:
        plan = plan_steps(items, cfg)
        # The step the state holds, so a resumed run's bar starts there and not at 0.
        emit(sink, "plan", **plan, resume_state=job.resume_state, start_step=_saved_step(job.resume_state))
        session = build_session(job, cfg, items, models_dir, plan["total_steps"])
        session.sink, session.show_progress = sink, show_progress
        session.stop_requested = stop_requested or (lambda: False)
        return train(session)
    finally:
        log.removeHandler(forward)


def build_session(job: TrainJob, cfg: TrainingConfig, items: list[TrainItem], models_dir: Path, total_steps: int) -> Session:
    """Build every component in dependency order and restore a state if the job names one."""
    _seed_everything(cfg.seed)
    precision = resolve_precision(cfg.mixed_precision)
    dtype = weight_dtype(precision)
    accelerator = build_accelerator(precision)
    # Caches first: the VAE and the text stack are freed before the transformer is loaded. With
    # several GPUs, process 0 encodes and the others then find every entry on disk. On fp16 GPUs the
    # encoders run in fp32: Qwen3 and the VAE were made for bf16's range, and this runs once per image.
    with accelerator.main_process_first():
        cache_dtype = torch.float32 if dtype == torch.float16 else dtype
        cache = build_cache(items, models_dir, Path(job.work_dir), accelerator.device, cache_dtype)
    st = cache.stats
    log.info("caches: %d latents reused, %d encoded; %d captions reused, %d encoded%s",
             st.latents_reused, st.latents_encoded, st.texts_reused, st.texts_encoded,
             f"; {st.latents_repaired} latents and {st.texts_repaired} captions encoded again in fp32 (NaN/inf)"
             if st.latents_repaired or st.texts_repaired else "")  # fmt: skip
    sampler = build_sampler(items, cfg.batch_size, cfg.micro_batches_per_step, cfg.seed)
    model = build_lora_model(build_transformer(models_dir, dtype, cfg.gradient_checkpointing), cfg.network_dim, cfg.network_alpha, cfg.seed)
    # The optimizer needs the LoRA parameters; the scheduler needs the optimizer and the step count.
    model.to(accelerator.device)  # before the optimizer is built: it must hold the device's parameters
    speed_up_transformer(accelerator.unwrap_model(model), attention_backend=cfg.attention_backend,
                         compile_blocks=cfg.compile_blocks and accelerator.device.type == "cuda")
    optimizer = build_optimizer(lora_parameters(model), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # Each process draws its own noise; process 0 of a data-parallel run draws what a one-GPU run would.
    generator = torch.Generator(device=accelerator.device).manual_seed(cfg.seed + accelerator.process_index)
    fingerprint = cfg.fingerprint(job.dataset_fingerprint)
    progress = TrainingProgress(
        total_steps=total_steps, steps_per_epoch=sampler.steps_per_epoch, seed=cfg.seed, sampler_seed=sampler.seed,
        fingerprint=fingerprint, training_fields=cfg.training_fields(),
    )  # fmt: skip
    if job.resume_state:
        progress = _restore(Path(job.resume_state), cfg, fingerprint, accelerator, model, optimizer, scheduler, generator)
    return Session(
        cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler,
        cache=cache, generator=generator, progress=progress, output_dir=Path(job.output_dir),
        dataset_fingerprint=job.dataset_fingerprint, last_state=job.resume_state,
    )  # fmt: skip


def _restore(folder, cfg, fingerprint, accelerator, model, optimizer, scheduler, generator) -> TrainingProgress:
    """Continue exactly where the state left off: weights, optimizer, LR schedule, scaler, RNGs, data position."""
    progress, adapter, training_state = load_state(folder)
    check_resume(progress, cfg, fingerprint)
    load_adapter_state_dict(accelerator.unwrap_model(model), adapter)
    optimizer.load_state_dict(training_state[OPTIMIZER_KEY])
    scheduler.load_state_dict(training_state[SCHEDULER_KEY])
    if accelerator.scaler is not None and training_state[SCALER_KEY] is not None:
        accelerator.scaler.load_state_dict(training_state[SCALER_KEY])
    restore_rng(training_state[RNG_KEY], generator, accelerator.process_index)
    log.info("resumed from %s at step %d of %d (%s)", folder, progress.global_step, progress.total_steps,
             epoch_position(progress.epoch, progress.step_in_epoch, cfg.max_train_epochs))  # fmt: skip
    return progress


def _saved_step(resume_state: str | None) -> int:
    if not resume_state:
        return 0
    try:
        return int(json.loads((Path(resume_state) / PROGRESS_FILE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # _restore reads the same file and says what is wrong with it


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _EventLogHandler(logging.Handler):
    """Forwards the trainer's log records (INFO and up) to the sink as "log" events."""

    def __init__(self, sink: EventSink | None):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if self.sink is not None:
            self.sink(Event("log", {"level": record.levelname.lower(), "message": record.getMessage()}))
