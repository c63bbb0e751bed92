"""The native trainer's entry: run_training(job) in-process, or `python -m anima_lora_flow.trainer` as a subprocess."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import TrainingConfig
from ..core.formatting import epoch_position
from ..core.train_items import TrainItem, samples_per_bucket
from ..effective import Effective, Machine, derive
from ..errors import UserInputError

from .backend import TrainJob
from .cache import build_cache, place_cache
from .compiled import batch_shapes, check_compile_mode, loss_function
from .components import build_transformer, check_models_dir, speed_up_transformer
from .data import build_sampler
from .events import EventSink, Log, Plan, emit
from .lora import build_lora_model, load_adapter_state_dict, lora_parameters
from .native import NativeBackend, saved_step
from .loss import Objective
from .sample_plan import sample_prompts_for
from .sampling import build_sampling, prompt_texts
from .validation import adopt_record, build_validator
from .loop import (
    EFFECTIVE_KEY,
    Session,
    TrainResult,
    build_accelerator,
    build_optimizer,
    build_scheduler,
    train,
    weight_dtype,
)
from .state import (
    OPTIMIZER_KEY,
    RNG_KEY,
    SCALER_KEY,
    SCHEDULER_KEY,
    TrainingProgress,
    apply_new_settings,
    base_model_record,
    check_resume,
    load_state,
    restore_rng,
)

__all__ = ["TrainJob", "TrainResult", "run_training", "effective_numbers"]

log = logging.getLogger("anima_lora_flow.trainer")


def effective_numbers(items: list[TrainItem], cfg: TrainingConfig, machine: Machine | None = None) -> Effective:
    """The run's numbers (effective.derive) for this machine; one process per GPU of cfg.num_gpus."""
    return derive(cfg, samples_per_bucket(items), machine or Machine.detect(processes=cfg.num_gpus),
                  NativeBackend.numbers)


def _with_resumed_batch(cfg: TrainingConfig, state: str | None) -> TrainingConfig:
    """batch_size 0 (auto) goes on at the batch its state trained at: another GPU's auto batch would change
    what an epoch is and the data order (resume_rules: batch_size must match)."""
    if cfg.batch_size or not state:
        return cfg
    from .state import TRAINING_STATE_FILE  # noqa: PLC0415

    try:
        saved = torch.load(Path(state) / TRAINING_STATE_FILE, map_location="cpu", weights_only=False).get(EFFECTIVE_KEY) or {}
    except (OSError, RuntimeError):  # load_state reports a damaged state with its own message
        return cfg
    batch = saved.get("batch_size")
    if not batch:  # states older than batch auto come from runs that set it
        return cfg
    log.info("batch_size auto: resuming at the state's batch %d", batch)
    return cfg.model_copy(update={"batch_size": int(batch)})


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
        eff = effective_numbers(items, _with_resumed_batch(cfg, job.resume_state))
        # The step the state holds, so a resumed run's bar starts there and not at 0.
        emit(sink, Plan(total_steps=eff.total_steps, steps_per_epoch=eff.steps_per_epoch, epochs=eff.steps.epochs,
                        warmup_steps=eff.warmup_steps, precision=eff.precision, optimizer=eff.optimizer_class,
                        resume_state=job.resume_state, start_step=saved_step(job.resume_state)))  # fmt: skip
        log.info("effective numbers: %s", json.dumps(eff.record(), sort_keys=True))
        session = build_session(job, cfg, items, models_dir, eff)
        session.sink, session.show_progress = sink, show_progress
        session.stop_requested = stop_requested or (lambda: False)
        return train(session)
    finally:
        log.removeHandler(forward)


def build_session(job: TrainJob, cfg: TrainingConfig, items: list[TrainItem], models_dir: Path, eff: Effective) -> Session:
    """Build every component in dependency order and restore a state if the job names one."""
    _seed_everything(cfg.seed)
    dtype = weight_dtype(eff.precision)
    accelerator = build_accelerator(eff.precision)
    if accelerator.num_processes != eff.processes:
        raise RuntimeError(
            f"{accelerator.num_processes} training processes, but num_gpus is {eff.processes}: "
            "start data-parallel runs with `python -m anima_lora_flow.trainer`, which starts one process per GPU"
        )
    check_compile_mode(eff.compile_mode, accelerator.device)  # before minutes of caching
    # Caches first: the VAE and the text stack are freed before the transformer is loaded. With
    # several GPUs, process 0 encodes and the others then find every entry on disk. On fp16 GPUs the
    # encoders run in fp32: Qwen3 and the VAE were made for bf16's range, and this runs once per image.
    with accelerator.main_process_first():
        cache_dtype = torch.float32 if dtype == torch.float16 else dtype
        # The held-out items go through the same cache, after the training items (the sampler's indices).
        held_out = [TrainItem.from_json(item) for item in job.validation_items]
        # The sample prompts are encoded with the captions, while the text stack is loaded anyway.
        prompts = sample_prompts_for(cfg, items) if cfg.sample_every_n_epochs else []
        cache = build_cache(items + held_out, models_dir, Path(job.work_dir), accelerator.device, cache_dtype,
                            extra_texts=prompt_texts(prompts))  # fmt: skip
    st = cache.stats
    log.info("caches: %d latents reused, %d encoded; %d captions reused, %d encoded%s",
             st.latents_reused, st.latents_encoded, st.texts_reused, st.texts_encoded,
             f"; {st.latents_repaired} latents and {st.texts_repaired} captions encoded again in fp32 (NaN/inf)"
             if st.latents_repaired or st.texts_repaired else "")  # fmt: skip
    sampler = build_sampler(items, eff.batch_size, eff.micro_batches_per_step, cfg.seed)
    transformer = build_transformer(models_dir, dtype, eff.gradient_checkpointing, rope_patches=eff.rope_patches)
    model, optimizer, prepared_optimizer, scheduler = build_lora_training(cfg, eff, accelerator, transformer)
    place_cache(cache, accelerator.device)  # after the model: the share is of the memory the model left free
    shapes = batch_shapes((batch for group in sampler.epoch_groups(0) for batch in group), cache)
    # Reseeded for every micro-batch (loop.micro_batch_seed); its device is where the draws happen.
    generator = torch.Generator(device=accelerator.device).manual_seed(cfg.seed)
    fingerprint = cfg.fingerprint(job.dataset_fingerprint)
    progress = TrainingProgress(
        total_steps=eff.total_steps, steps_per_epoch=eff.steps_per_epoch, seed=cfg.seed, sampler_seed=sampler.seed,
        fingerprint=fingerprint, training_fields=cfg.training_fields(), dataset_fingerprint=job.dataset_fingerprint,
        base_model=base_model_record(cfg, transformer),
    )  # fmt: skip
    if job.resume_state:
        progress, scheduler = _restore(Path(job.resume_state), cfg, eff, progress, accelerator, model, optimizer,
                                       scheduler, generator)  # fmt: skip
    validator = build_validator(items, held_out, cfg.seed, Objective(cfg.timestep_sampling, cfg.sigmoid_scale,
                                cfg.discrete_flow_shift), eff.steps.samples_per_epoch)  # fmt: skip
    adopt_record(progress, validator)
    log.info("validation loss: %s%s at noise levels %s, each epoch's end", validator.label,
             f" (from {job.validation_source})" if held_out and job.validation_source else "",
             ", ".join(f"{v:g}" for v in validator.sigmas))  # fmt: skip
    sampling = build_sampling(prompts, cache, models_dir, Path(job.work_dir), cfg.sample_every_n_epochs, dtype,
                              cache_dtype) if prompts else None  # fmt: skip
    return Session(
        cfg=cfg, effective=eff, accelerator=accelerator, model=model, optimizer=prepared_optimizer, scheduler=scheduler,
        sampler=sampler, cache=cache, generator=generator, progress=progress, output_dir=Path(job.output_dir),
        dataset_fingerprint=job.dataset_fingerprint, last_state=job.resume_state, validation=validator,
        sampling=sampling, loss_function=loss_function(eff.compile_mode, accelerator.device, len(shapes)),
    )  # fmt: skip


def build_lora_training(cfg: TrainingConfig, eff: Effective, accelerator, transformer: torch.nn.Module):
    """The LoRA model, its optimizer and LR schedule around a frozen transformer, in dependency order.

    Returns (model, optimizer, prepared optimizer, scheduler); the unprepared optimizer is the one a
    saved state loads into. The trainer and bench/bench_step.py both build through here.
    """
    model = build_lora_model(transformer, cfg.network_dim, cfg.network_alpha, cfg.seed)
    # The optimizer needs the LoRA parameters; the scheduler needs the optimizer and the step counts.
    model.to(accelerator.device)  # before the optimizer is built: it must hold the device's parameters
    speed_up_transformer(accelerator.unwrap_model(model), attention_backend=cfg.attention_backend,
                         compile_blocks=eff.compile_mode == "blocks" and accelerator.device.type == "cuda")
    optimizer = build_optimizer(lora_parameters(model), cfg, eff)
    # Built before a saved optimizer state is loaded: a new scheduler sets the LR to its step-0 value,
    # the loaded state then puts the saved one back.
    scheduler = build_scheduler(optimizer, cfg, eff)
    # The scheduler stays out of prepare (see loop.build_scheduler): it counts optimizer steps.
    model, prepared_optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, prepared_optimizer, scheduler


def _restore(folder, cfg, eff: Effective, fresh: TrainingProgress, accelerator, model, optimizer, scheduler, generator):
    """Continue exactly where the state left off: weights, optimizer, LR schedule, scaler, RNGs, data position.

    Returns the progress and the scheduler: a new one when the run's total steps changed (more or
    fewer epochs), continuing the LR from the saved step (loop.build_scheduler).
    """
    progress, adapter, training_state = load_state(folder)
    for change in check_resume(progress, cfg, fresh.fingerprint, dataset_fingerprint=fresh.dataset_fingerprint,
                               base_model=fresh.base_model):  # fmt: skip
        log.warning("changed since the saved state: %s", change)
    if progress.steps_per_epoch != eff.steps_per_epoch:
        raise UserInputError(
            f"cannot resume: the state's epochs have {progress.steps_per_epoch} steps, this run's {eff.steps_per_epoch} "
            "(another batch size, number of GPUs or dataset); restore those settings or start over with restart=True"
        )
    if eff.total_steps < progress.global_step:
        raise UserInputError(
            f"cannot resume: the state is at step {progress.global_step}, past this run's {eff.total_steps} steps; "
            "raise max_train_epochs or start over with restart=True"
        )
    load_adapter_state_dict(accelerator.unwrap_model(model), adapter)
    optimizer.load_state_dict(training_state[OPTIMIZER_KEY])
    # Saved after the last step: the rate the next step would use, and the peak it was scaled from.
    saved_lr, saved_peak = optimizer.param_groups[0]["lr"], optimizer.param_groups[0].get("initial_lr")
    scheduler.load_state_dict(training_state[SCHEDULER_KEY])
    apply_new_settings(optimizer, scheduler, cfg, progress.training_fields)
    progress.adopt(fresh)  # after apply_new_settings, which reads the saved settings
    if progress.total_steps != eff.total_steps:
        # More or fewer epochs: the schedule is re-planned for the new total from this step, continuing
        # from the saved rate (scaled when the learning rate setting changed too). A finished run's rate
        # has decayed to its end (0 for cosine and linear): continuing from it would train the added
        # epochs at nothing, so a finished run follows the new schedule itself from this step.
        finished = progress.global_step >= progress.total_steps
        lr_at_step = None if finished else saved_lr * cfg.learning_rate / saved_peak if saved_peak else saved_lr
        scheduler = build_scheduler(optimizer, cfg, eff, step=progress.global_step, lr_at_step=lr_at_step)
        log.info("the run now has %d steps instead of %d: the LR schedule continues from step %d at %.3g",
                 eff.total_steps, progress.total_steps, progress.global_step, scheduler.get_last_lr()[0])  # fmt: skip
        progress.total_steps = eff.total_steps
    if accelerator.scaler is not None and training_state[SCALER_KEY] is not None:
        accelerator.scaler.load_state_dict(training_state[SCALER_KEY])
    saved = training_state.get(EFFECTIVE_KEY) or {}
    changed = [f"{k} {saved[k]} -> {v}" for k, v in eff.record().items()
               if k in ("precision", "optimizer_class") and k in saved and saved[k] != v]  # fmt: skip
    if changed:  # auto settings resolve per machine: a T4 state resumed on an L4 goes on in bf16
        log.warning("resuming on another kind of machine: %s", "; ".join(changed))
    restore_rng(training_state[RNG_KEY], generator, accelerator.process_index)
    log.info("resumed from %s at step %d of %d (%s)", folder, progress.global_step, progress.total_steps,
             epoch_position(progress.epoch, progress.step_in_epoch, cfg.max_train_epochs))  # fmt: skip
    return progress, scheduler


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
            self.sink(Log(level=record.levelname.lower(), message=record.getMessage()))
