"""The training loop (one function, nanoGPT order) and the build_* functions it needs."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from anima_lora_flow.config import TrainingConfig

from .cache import TrainingCache
from .data import BucketSampler, collate
from .events import EventSink, emit
from .lora import adapter_state_dict, lora_metadata, lora_parameters, save_lora_file, to_comfy_state_dict
from .loss import Objective, compute_loss
from .state import OPTIMIZER_KEY, RNG_KEY, SCALER_KEY, SCHEDULER_KEY, TrainingProgress, prune_states, rng_state, save_state

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between loss read-outs: .item() is a host sync, so not every step


# --- builders -----------------------------------------------------------------------------------


def resolve_precision(setting: str) -> str:
    """'auto' -> bf16 where the GPU has native bf16, fp16 on other GPUs (a T4 only emulates bf16), 'no' on CPU."""
    if not torch.cuda.is_available():
        if setting not in ("auto", "no"):
            log.warning("mixed_precision=%r needs a GPU; training in fp32 on the CPU", setting)
        return "no"
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def weight_dtype(precision: str) -> torch.dtype:
    """dtype of the frozen weights; the LoRA weights stay fp32 (GradScaler needs fp32 grads for fp16)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def build_accelerator(precision: str):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=precision)


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA, foreach elsewhere), AdamW8bit when bitsandbytes exists, or Adafactor."""
    kwargs = dict(lr=cfg.learning_rate, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, relative_step=False, scale_parameter=False)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except ImportError:
            log.warning("optimizer='adamw8bit' needs bitsandbytes, which is not installed: using torch AdamW (more memory)")
    cuda = all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, fused=True if cuda else None, foreach=None if cuda else True, **kwargs)


def effective_warmup_steps(lr_warmup_steps: int, total_steps: int) -> int:
    """Warm-up clamped to a tenth of the run: min(lr_warmup_steps, max(1, total // 10)); 0 stays 0.

    The seed's 100 warm-up steps would swallow a short run entirely; a tenth keeps a real decay phase.
    """
    return 0 if lr_warmup_steps == 0 else min(lr_warmup_steps, max(1, total_steps // 10))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int):
    from diffusers.optimization import get_scheduler

    extra = {"num_cycles": cfg.lr_scheduler_num_cycles} if cfg.lr_scheduler == "cosine_with_restarts" else {}
    return get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=effective_warmup_steps(cfg.lr_warmup_steps, total_steps),
        num_training_steps=total_steps,
        **extra,
    )


# --- the loop -------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    final_lora: str | None  # None when stopped early
    steps: int
    total_steps: int
    last_loss: float | None
    stopped: bool = False
    state: str | None = None  # the newest state folder
    loras: list[str] = field(default_factory=list)


@dataclass
class Session:
    """Everything train() works with, built by run.run_training."""

    cfg: TrainingConfig
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    sampler: BucketSampler
    cache: TrainingCache
    generator: torch.Generator
    progress: TrainingProgress
    output_dir: Path
    dataset_fingerprint: str = ""
    sink: EventSink | None = None
    stop_requested: Callable[[], bool | str] = lambda: False  # a str is the reason ("deadline", "SIGTERM")
    show_progress: bool = False
    last_state: str | None = None
    loras: list[str] = field(default_factory=list)


def train(s: Session) -> TrainResult:
    """Run (or continue) the optimizer steps of s.progress until done or asked to stop."""
    cfg, p, acc = s.cfg, s.progress, s.accelerator
    objective = Objective(cfg.timestep_sampling, cfg.sigmoid_scale, cfg.discrete_flow_shift)
    params = lora_parameters(s.model)
    meter = LossMeter(p.global_step)
    bar = tqdm(total=p.total_steps, initial=p.global_step, mininterval=2.0, disable=not s.show_progress, unit="step")
    last_state_time = time.monotonic()
    s.model.train()
    while p.epoch < cfg.max_train_epochs:
        # The order is a pure function of (seed, epoch): a resume skips the groups already consumed.
        for group in s.sampler.epoch_groups(p.epoch)[p.step_in_epoch :]:
            for micro_batch in group:
                batch = collate(micro_batch, s.cache, s.generator, cfg.caption_dropout, acc.device)
                loss = compute_loss(s.model, batch, objective, s.generator) / len(group)
                acc.backward(loss)
                meter.add(loss.detach())
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            p.advance()
            bar.update(1)

            if p.global_step % LOG_EVERY == 0 or p.global_step == p.total_steps:
                p.last_loss, sec_per_step = meter.read(p.global_step)
                bar.set_postfix(loss=f"{p.last_loss:.4f}", refresh=False)
                lr = s.scheduler.get_last_lr()[0]
                emit(s.sink, "step", step=p.global_step, total=p.total_steps, loss=p.last_loss, lr=lr,
                     sec_per_step=sec_per_step, epoch=p.epoch + 1)  # fmt: skip
            if cfg.save_state_every_minutes and time.monotonic() - last_state_time >= cfg.save_state_every_minutes * 60:
                save_full_state(s)
                last_state_time = time.monotonic()
            reason = s.stop_requested()
            if reason:
                bar.close()
                return stop(s, reason if isinstance(reason, str) else "requested")
        p.next_epoch()
        if cfg.save_every_n_epochs and p.epoch % cfg.save_every_n_epochs == 0 and p.epoch < cfg.max_train_epochs:
            save_lora(s, Path(s.output_dir) / f"{cfg.project_name}-{p.epoch:06d}.safetensors", prune=True)
        save_full_state(s)
        last_state_time = time.monotonic()
    bar.close()
    final = save_lora(s, Path(s.output_dir) / f"{cfg.project_name}.safetensors", prune=False)
    emit(s.sink, "done", lora=str(final), steps=p.global_step, loss=p.last_loss, state=s.last_state)
    return TrainResult(str(final), p.global_step, p.total_steps, p.last_loss, False, s.last_state, s.loras)


class LossMeter:
    """Sums the loss on the device and reads it back (one host sync) only when asked."""

    def __init__(self, step: int):
        self.total, self.count, self.step, self.time = None, 0, step, time.monotonic()

    def add(self, loss: torch.Tensor) -> None:
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def read(self, step: int) -> tuple[float, float]:
        steps = max(1, step - self.step)
        # each optimizer step's micro-losses were divided by the group size: the sum per step is the mean
        value = float(self.total.item()) / steps if self.total is not None else math.nan
        elapsed = time.monotonic() - self.time
        self.total, self.count, self.step, self.time = None, 0, step, time.monotonic()
        return value, elapsed / steps


# --- saving ---------------------------------------------------------------------------------------


def save_lora(s: Session, path: Path, prune: bool) -> Path:
    """Export the ComfyUI/diffusers-format LoRA, emit a checkpoint event, keep the last N epoch files."""
    cfg, p = s.cfg, s.progress
    model = s.accelerator.unwrap_model(s.model)
    save_dtype = weight_dtype(s.accelerator.mixed_precision)
    tensors = to_comfy_state_dict(adapter_state_dict(model), cfg.network_scale, save_dtype)
    meta = lora_metadata(cfg, steps=p.global_step, epoch=p.epoch, total_steps=p.total_steps, dataset_fingerprint=s.dataset_fingerprint)
    save_lora_file(path, tensors, meta)
    s.loras.append(str(path))
    emit(s.sink, "checkpoint", kind="lora", path=str(path), step=p.global_step, epoch=p.epoch)
    if prune and cfg.save_last_n_epochs:
        epoch_files = sorted(Path(s.output_dir).glob(f"{cfg.project_name}-[0-9][0-9][0-9][0-9][0-9][0-9].safetensors"))
        for old in epoch_files[: -cfg.save_last_n_epochs]:
            old.unlink(missing_ok=True)
    return path


def save_full_state(s: Session) -> str:
    """Write state/step_N (adapter, optimizer, scheduler, scaler, RNGs, progress) and emit a checkpoint event."""
    p = s.progress
    folder = Path(s.output_dir) / "state" / f"step_{p.global_step:08d}"
    if s.last_state == str(folder):
        return s.last_state  # already saved at this step (an epoch end followed by a stop)
    scaler = s.accelerator.scaler
    training_state = {
        OPTIMIZER_KEY: s.optimizer.state_dict(),
        SCHEDULER_KEY: s.scheduler.state_dict(),
        SCALER_KEY: scaler.state_dict() if scaler is not None else None,
        RNG_KEY: rng_state(s.generator),
    }
    save_state(folder, p, adapter_state_dict(s.accelerator.unwrap_model(s.model)), training_state)
    prune_states(folder.parent, s.cfg.keep_last_states)
    s.last_state = str(folder)
    emit(s.sink, "checkpoint", kind="state", path=str(folder), step=p.global_step, epoch=p.epoch)
    return s.last_state


def stop(s: Session, reason: str) -> TrainResult:
    state = save_full_state(s)
    p = s.progress
    emit(s.sink, "stopped", reason=reason, state=state, step=p.global_step, total=p.total_steps)
    return TrainResult(None, p.global_step, p.total_steps, p.last_loss, True, state, s.loras)
