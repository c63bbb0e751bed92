"""The training loop (one function, nanoGPT order) and the build_* functions it needs."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import TrainingConfig
from ..effective import Effective
from ..errors import TrainingError, UserInputError, setting

from ..core.lora_files import epoch_of, kohya_name, lora_file_name
from .cache import TrainingCache
from .data import BucketSampler, collate
from .data_parallel import shard
from .events import Checkpoint, Done, EventSink, Step, Stopped, emit
from .lora import (
    adapter_state_dict,
    base_model_metadata,
    kohya_metadata,
    lora_metadata,
    lora_parameters,
    save_lora_file,
    to_comfy_state_dict,
    to_kohya_state_dict,
)
from .loss import LossFunction, Objective, compute_loss, flow_matching_loss
from .sampling import Sampling, at_epoch_end, sample_now
from .validation import Validator, best_epoch, validate
from .validation import metadata as validation_metadata
from .state import OPTIMIZER_KEY, RNG_KEY, SCALER_KEY, SCHEDULER_KEY, TrainingProgress, prune_states, rng_state, save_state

log = logging.getLogger(__name__)

EFFECTIVE_KEY = "effective"  # training_state.pt: the Effective numbers the state was trained with

LOG_EVERY = 10  # steps between loss read-outs: .item() is a host sync, so not every step
NONFINITE_READS = 3  # loss read-outs in a row that are NaN/inf before the run is called diverged


class TrainingDivergedError(TrainingError):
    """The loss or the LoRA weights became NaN/inf; nothing is saved from that point on.

    Saving would write a poisoned state and prune the good ones, and training on would spend the
    session on nothing (fp16 without loss scaling room skips every step).
    """


def diverged(s: "Session", what: str) -> TrainingDivergedError:
    cfg, p = s.cfg, s.progress
    if s.accelerator.mixed_precision == "fp16":
        fix = (f"{setting('mixed_precision', 'bf16')} on a GPU that has it (A100, L4, H100...), "
               f"or {setting('mixed_precision', 'no')} (slower)")
    else:
        fix = f"a lower {setting('learning_rate')} (now {cfg.learning_rate:g})"
    good = f"the last good state is {s.last_state}" if s.last_state else "no state was saved before it"
    return TrainingDivergedError(
        f"training diverged at step {p.global_step}: {what} became NaN/inf; nothing was saved after that, {good}. "
        f"Start over with {setting('restart')} and {fix}",
        field="mixed_precision" if s.accelerator.mixed_precision == "fp16" else "learning_rate",
    )


def check_finite(s: "Session", params: list[torch.nn.Parameter]) -> None:
    """One host sync: every LoRA weight finite, or TrainingDivergedError before anything is written."""
    if not bool(torch.stack([torch.isfinite(param).all() for param in params]).all()):
        raise diverged(s, "the LoRA weights")


# --- builders -----------------------------------------------------------------------------------


def weight_dtype(precision: str) -> torch.dtype:
    """dtype of the frozen weights; the LoRA weights stay fp32 (GradScaler needs fp32 grads for fp16)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def build_accelerator(precision: str):
    """accelerate's Accelerator; data-parallel when started by trainer/data_parallel.py (RANK etc. set)."""
    from accelerate import Accelerator

    # cpu=True is how accelerate forms a multi-process (gloo) group without GPUs; it changes nothing else.
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainingConfig, eff: Effective) -> torch.optim.Optimizer:
    """The optimizer `eff` names: AdamW (fused on CUDA, foreach elsewhere), AdamW8bit or Adafactor.

    Raises:
        UserInputError: adamw8bit without bitsandbytes (the plan refuses it first; never a silent fallback).
    """
    kwargs = dict(lr=cfg.learning_rate, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if eff.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, relative_step=False, scale_parameter=False)
    if eff.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise UserInputError(
                f"{setting('optimizer', 'adamw8bit')} needs bitsandbytes, which is not installed: pip install bitsandbytes, "
                f"or use {setting('optimizer', 'auto')} (torch AdamW, fused on a GPU)",
                field="optimizer",
            ) from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    cuda = all(p.is_cuda for p in params)
    if eff.compile_mode == "cuda-graphs":
        # Its step count on the device: no host-side counter to read back, and a step CUDA graphs can capture.
        return torch.optim.AdamW(params, fused=True, capturable=True, **kwargs)
    return torch.optim.AdamW(params, fused=True if cuda else None, foreach=None if cuda else True, **kwargs)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """What was built, in sd-scripts' ss_optimizer form: `module.Class(arg=value,...)` (train_util.py line 5218)."""
    from accelerate.optimizer import AcceleratedOptimizer

    if isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    cls = type(optimizer)
    defaults = optimizer.defaults
    args = {k: defaults[k] for k in ("fused", "foreach", "weight_decay", "betas") if defaults.get(k) is not None}
    return f"{cls.__module__}.{cls.__name__}(" + ",".join(f"{k}={v}" for k, v in args.items()) + ")"


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, eff: Effective, *, step: int = 0,
                    lr_at_step: float | None = None):
    """The LR schedule of `eff`'s counts, stepped by the loop once per optimizer step.

    It is never passed through accelerator.prepare: accelerate's prepared scheduler steps once per
    process when batches are not split, so with 2 GPUs the schedule would run twice as fast (a
    cosine_with_restarts rate reached 0 halfway). Kept out, it counts optimizer steps whatever the
    number of processes, and the LR is a pure function of the step (a skipped fp16 step still counts).

    step > 0 starts the schedule there, for a resume whose total steps changed: the shape is the new
    run's, scaled so that the LR at `step` is `lr_at_step` (the old schedule's), so the rate goes on
    without a jump. Constant stays constant and linear decays in a straight line from the current
    rate to 0 at the new end. Cosine keeps its value and follows the new total's cosine tail (a longer
    run decays more slowly from there). The scale never lifts the peak above the configured LR: when a
    continuous curve would need that (a resume during a longer new warm-up, a later restart of
    cosine_with_restarts after shortening), the LR follows the new schedule itself from `step`.
    """
    from diffusers.optimization import get_scheduler

    def make(opt, last_epoch=-1):
        extra = {"num_cycles": cfg.lr_scheduler_num_cycles} if cfg.lr_scheduler == "cosine_with_restarts" else {}
        return get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=eff.scheduler_warmup_steps,
                             num_training_steps=eff.scheduler_training_steps, last_epoch=last_epoch, **extra)  # fmt: skip

    if step <= 0:
        return make(optimizer)
    # The new schedule's factor per step, read from a throwaway optimizer with the same default LR
    # (polynomial's factor depends on it: its end LR is absolute).
    shape = make(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=optimizer.defaults["lr"])).lr_lambdas[0]
    at_step = shape(step)
    base = cfg.learning_rate if lr_at_step is None or at_step <= 0 else min(cfg.learning_rate, lr_at_step / at_step)
    for group in optimizer.param_groups:
        group["initial_lr"] = base  # what a scheduler built with last_epoch >= 0 scales
    return make(optimizer, last_epoch=step - 1)  # its first internal step lands on `step`


# --- the loop -------------------------------------------------------------------------------------


def micro_batch_seed(seed: int, step: int, index: int) -> int:
    """The seed of one micro-batch's draws (noise level, noise, caption dropout).

    A function of the run's seed, the optimizer step and the micro-batch's place in that step, not
    of the process that runs it: N GPUs draw exactly what one GPU accumulating the same N
    micro-batches draws, a padded repeat draws what its original drew, and a resume needs no
    generator state to continue the same draws.
    """
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])



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
    effective: Effective
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
    loss_function: LossFunction = flow_matching_loss  # or its compiled form (trainer/compiled.py)
    validation: Validator | None = None  # measures the validation loss at each epoch's end
    sampling: Sampling | None = None  # sample grids every N epochs, at the end and at a stop


def train(s: Session) -> TrainResult:
    """Run (or continue) the optimizer steps of s.progress until done or asked to stop."""
    cfg, p, acc = s.cfg, s.progress, s.accelerator
    objective = Objective(cfg.timestep_sampling, cfg.sigmoid_scale, cfg.discrete_flow_shift)
    params = lora_parameters(s.model)
    meter = LossMeter(p.global_step)
    nonfinite_reads = 0
    bar = tqdm(total=p.total_steps, initial=p.global_step, mininterval=2.0, disable=not s.show_progress, unit="step")
    last_state_time = time.monotonic()
    s.model.train()
    while p.epoch < cfg.max_train_epochs:
        # The order is a pure function of (seed, epoch): a resume skips the groups already consumed.
        for group in s.sampler.epoch_groups(p.epoch)[p.step_in_epoch :]:
            mine = shard(len(group), acc.num_processes, acc.process_index)
            for i, (index, weight) in enumerate(mine):
                s.generator.manual_seed(micro_batch_seed(cfg.seed, p.global_step, index))
                batch = collate(group[index], s.cache, s.generator, cfg.caption_dropout, acc.device)
                # DDP averages gradients over the processes at the last backward of the step only.
                with contextlib.nullcontext() if i == len(mine) - 1 else acc.no_sync(s.model):
                    loss = compute_loss(s.model, batch, objective, s.generator, s.loss_function) * weight
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
                p.last_loss, sec_per_step = meter.read(p.global_step, acc)
                nonfinite_reads = 0 if math.isfinite(p.last_loss) else nonfinite_reads + 1
                if nonfinite_reads >= NONFINITE_READS:
                    raise diverged(s, f"the loss (NaN/inf for {NONFINITE_READS * LOG_EVERY} steps)")
                bar.set_postfix(loss=f"{p.last_loss:.4f}", refresh=False)
                lr = s.scheduler.get_last_lr()[0]
                emit(s.sink, Step(step=p.global_step, total_steps=p.total_steps, loss=p.last_loss, lr=lr,
                                 sec_per_step=sec_per_step, epoch=p.epoch + 1))  # fmt: skip
            save_due = bool(cfg.save_state_every_minutes) and time.monotonic() - last_state_time >= cfg.save_state_every_minutes * 60
            reason, save_due = agreed_decisions(s, save_due)
            if save_due:
                save_full_state(s)
                last_state_time = time.monotonic()
            if reason:
                bar.close()
                return stop(s, reason if isinstance(reason, str) else "requested")
        p.next_epoch()
        epoch_end = time.monotonic()
        validate(s)  # before the epoch's LoRA and state: both record it (metadata, best epoch so far)
        if cfg.save_every_n_epochs and p.epoch % cfg.save_every_n_epochs == 0 and p.epoch < cfg.max_train_epochs:
            save_lora(s, Path(s.output_dir) / lora_file_name(cfg.project_name, p.epoch), prune=True)
        save_full_state(s)
        at_epoch_end(s)  # after the state: a crash while sampling loses no training
        last_state_time = time.monotonic()
        # The planner counts validation, saving and sampling on their own: the step rate the session
        # guard and the refined plan read must be the steps' alone.
        meter.leave_out(last_state_time - epoch_end)
    bar.close()
    final = save_lora(s, Path(s.output_dir) / lora_file_name(cfg.project_name), prune=False)
    emit(s.sink, Done(lora=str(final), step=p.global_step, loss=p.last_loss, state=s.last_state))
    sample_now(s)  # after "done": the final LoRA is synced while the last grid is drawn
    return TrainResult(str(final), p.global_step, p.total_steps, p.last_loss, False, s.last_state, s.loras)


class LossMeter:
    """Sums the loss on the device and reads it back (one host sync) only when asked."""

    def __init__(self, step: int):
        self.total, self.count, self.step, self.time = None, 0, step, time.monotonic()

    def leave_out(self, seconds: float) -> None:
        """Time spent between steps (an epoch's end) that seconds-per-step must not include."""
        self.time += seconds

    def add(self, loss: torch.Tensor) -> None:
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def read(self, step: int, accelerator=None) -> tuple[float, float]:
        """(mean loss per step since the last read, seconds per step); averaged over data-parallel processes."""
        steps = max(1, step - self.step)
        total = self.total
        if accelerator is not None and accelerator.num_processes > 1 and total is not None:
            total = accelerator.reduce(total.detach().clone(), "mean")  # every process reads at the same steps
        # each micro-loss carries its share of the step (data_parallel.shard): the sum per step is the step's mean
        value = float(total.item()) / steps if total is not None else math.nan
        elapsed = max(0.0, time.monotonic() - self.time)
        self.total, self.count, self.step, self.time = None, 0, step, time.monotonic()
        return value, elapsed / steps


# --- saving ---------------------------------------------------------------------------------------


def agreed_decisions(s: Session, save_due: bool) -> tuple[str | bool, bool]:
    """(stop reason, save a state now), agreed by every process: all act after the same step or none.

    Saving a state is a collective (the RNGs are gathered), and a process that stops alone leaves
    the others waiting in their next all-reduce forever. With several processes this costs one tiny
    all-reduce and host sync per step.
    """
    reason = s.stop_requested()
    acc = s.accelerator
    if acc.num_processes == 1:
        return reason, save_due
    flags = acc.reduce(torch.tensor([1.0 if reason else 0.0, 1.0 if save_due else 0.0], device=acc.device), "sum")
    stop, save = (bool(v > 0) for v in flags.tolist())
    return ((reason or "stop requested in another training process") if stop else False), save


def save_lora(s: Session, path: Path, prune: bool) -> Path:
    """Export the ComfyUI/diffusers-format LoRA (and its kohya copy), emit a checkpoint event, keep the last N epochs."""
    cfg, p = s.cfg, s.progress
    model = s.accelerator.unwrap_model(s.model)
    check_finite(s, lora_parameters(model))  # in every process: all raise or none
    if not s.accelerator.is_main_process:
        return path  # process 0 holds the same weights (DDP) and writes the file
    save_dtype = weight_dtype(s.effective.precision)
    adapter = adapter_state_dict(model)
    meta = lora_metadata(cfg, s.effective, optimizer=describe_optimizer(s.optimizer), steps=p.global_step, epoch=p.epoch,
                         total_steps=p.total_steps, dataset_fingerprint=s.dataset_fingerprint)  # fmt: skip
    meta.update(base_model_metadata(p.base_model))
    meta.update(validation_metadata(p))
    if cfg.save_kohya_lora:  # written first: the checkpoint event below makes the runner sync both
        save_lora_file(path.with_name(kohya_name(path.name)), to_kohya_state_dict(adapter, cfg.network_alpha, save_dtype),
                       kohya_metadata(meta))  # fmt: skip
    save_lora_file(path, to_comfy_state_dict(adapter, cfg.network_scale, save_dtype), meta)
    s.loras.append(str(path))
    emit(s.sink, Checkpoint(kind="lora", path=str(path), step=p.global_step, epoch=p.epoch))
    if prune and cfg.save_last_n_epochs:
        epoch_files = sorted(f for f in Path(s.output_dir).iterdir() if epoch_of(cfg.project_name, f.name) is not None)
        best = best_epoch(p)  # the lowest validation loss names the LoRA to use: never pruned
        for old in epoch_files[: -cfg.save_last_n_epochs]:
            if best is not None and epoch_of(cfg.project_name, old.name) == best:
                continue
            old.unlink(missing_ok=True)
            old.with_name(kohya_name(old.name)).unlink(missing_ok=True)
    return path


def save_full_state(s: Session) -> str:
    """Write state/step_N (adapter, optimizer, scheduler, scaler, RNGs, progress) and emit a checkpoint event."""
    p = s.progress
    folder = Path(s.output_dir) / "state" / f"step_{p.global_step:08d}"
    if s.last_state == str(folder):
        return s.last_state  # already saved at this step (an epoch end followed by a stop)
    acc = s.accelerator
    check_finite(s, lora_parameters(s.model))  # every process holds the same weights: all raise or none
    rngs = [rng_state(s.generator)]
    if acc.num_processes > 1:  # a collective: every process takes part, process 0 writes
        from accelerate.utils import gather_object

        rngs = gather_object(rngs)
    s.last_state = str(folder)
    if not acc.is_main_process:
        return s.last_state
    training_state = {
        OPTIMIZER_KEY: s.optimizer.state_dict(),
        SCHEDULER_KEY: s.scheduler.state_dict(),
        SCALER_KEY: acc.scaler.state_dict() if acc.scaler is not None else None,
        RNG_KEY: rngs,
        EFFECTIVE_KEY: s.effective.record(),
    }
    save_state(folder, p, adapter_state_dict(s.accelerator.unwrap_model(s.model)), training_state)
    prune_states(folder.parent, s.cfg.keep_last_states)
    # epoch counts finished epochs; step_in_epoch tells an epoch's end from its middle for the resume line.
    emit(s.sink, Checkpoint(kind="state", path=str(folder), step=p.global_step, epoch=p.epoch,
                            step_in_epoch=p.step_in_epoch, epochs=s.cfg.max_train_epochs, total_steps=p.total_steps))  # fmt: skip
    return s.last_state


def stop(s: Session, reason: str) -> TrainResult:
    state = save_full_state(s)
    p = s.progress
    emit(s.sink, Stopped(reason=reason, state=state, step=p.global_step, total_steps=p.total_steps))
    sample_now(s)  # after "stopped": if the session ends mid-sampling, the state is already saved and reported
    return TrainResult(None, p.global_step, p.total_steps, p.last_loss, True, state, s.loras)
