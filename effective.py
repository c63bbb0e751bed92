"""Every effective number of a run, derived in one place from the config, the dataset and the machine.

The planner, both backends (the native loop and the sd-scripts TOML), the LoRA metadata and the
resumable state all read these numbers; none of them derives its own. Inputs:

- the config (`TrainingConfig`);
- the dataset: samples (images x repeats) per bucket, as `core.train_items.samples_per_bucket` counts them;
- the machine (`Machine`): a GPU or not, native bf16 or not, and how many training processes.

Step arithmetic is kohya's (sd-scripts 48d368fa): a batch holds one bucket, every bucket ends with
its own partial batch (train_util.py line 1079), and
`total = epochs * ceil(batches / processes / gradient_accumulation_steps)` (train_network.py line 800).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .config import TrainingConfig
from .core.buckets import Bucket, batches_per_epoch, make_buckets, optimizer_steps_per_epoch
from .core.gpus import find_spec
from .core.step_model import FastPath, Requested, Target, choose

log = logging.getLogger(__name__)

ResolvedPrecision = Literal["bf16", "fp16", "no"]
ResolvedOptimizer = Literal["adamw", "adamw8bit", "adafactor"]

# The class each name builds, in the native trainer (trainer/loop.py build_optimizer) and in sd-scripts.
OPTIMIZER_CLASS = {
    "adamw": "torch.optim.AdamW",
    "adamw8bit": "bitsandbytes.optim.AdamW8bit",
    "adafactor": "transformers.optimization.Adafactor",
}


class BackendNumbers(BaseModel):
    """A backend's own rules in the run's numbers; each backend module holds its instance (trainer/registry.py)."""

    model_config = ConfigDict(frozen=True)

    name: str
    auto_optimizer: ResolvedOptimizer  # what optimizer="auto" builds
    adamw_kernel: bool  # its AdamW is torch's with a fused (GPU) or foreach kernel, named in optimizer_class
    # Its LR scheduler steps once per training process per optimizer step, over steps x processes
    # (sd-scripts' prepared scheduler); otherwise once per optimizer step on any number of processes.
    scheduler_per_process: bool
    fp16_islands: bool  # its fp16 keeps fp32 islands (trainer/fp16.py): the memory estimate counts them
    # What its step can be compiled as (config compile_mode); a backend running its own model code: none.
    compile_modes: tuple[str, ...] = ("none",)


# The latent is 1/8 of the image and the DiT patches it 2x2: one RoPE position per 16 pixels.
PIXELS_PER_PATCH = 16
WARMUP_SHARE = 10  # warm-up is at most a tenth of the run


class Machine(BaseModel):
    """What the numbers depend on about the hardware."""

    model_config = ConfigDict(frozen=True)

    gpu: bool = False
    bf16_native: bool = False
    processes: int = 1  # data-parallel training processes (one per GPU)
    # What the fast path is chosen for (core/step_model.py); None: unknown, or no GPU.
    gpu_name: str | None = None
    memory_gib: float | None = None
    capability: tuple[int, int] | None = None
    peak_tflops: float | None = None

    @classmethod
    def from_gpu(cls, gpu, processes: int = 1) -> "Machine":
        """From a core.gpu.GpuInfo (detected or named in the planner's table), or None for no GPU."""
        if gpu is None:
            return cls(processes=processes)
        spec = find_spec(gpu.name)
        return cls(gpu=True, bf16_native=gpu.bf16_native, processes=processes, gpu_name=spec.name if spec else gpu.name,
                   memory_gib=gpu.memory_gib, capability=gpu.capability, peak_tflops=spec.peak_tflops if spec else None)

    @classmethod
    def detect(cls, processes: int = 1) -> "Machine":
        """This machine, as PyTorch sees device 0 (the same GpuInfo the planner reads)."""
        from .core.gpu import query_torch_gpu  # noqa: PLC0415 - imports torch

        return cls.from_gpu(query_torch_gpu(), processes)


class StepCount(BaseModel):
    """Per-epoch and total counts; `total_steps` counts optimizer steps (what sd-scripts calls "it")."""

    steps_per_epoch: int
    total_steps: int
    batches_per_epoch: int
    samples_per_epoch: int
    epochs: int = 1


class Effective(BaseModel):
    """The numbers a run really uses: never "auto", never a count a backend would compute differently."""

    model_config = ConfigDict(frozen=True)

    backend: str  # BackendNumbers.name
    processes: int
    micro_batches_per_step: int  # gradient accumulation times processes
    steps: StepCount
    warmup_steps: int  # optimizer steps of LR warm-up
    lr_scheduler: str
    # What the LR scheduler object is built with, and how often it steps per optimizer step.
    scheduler_training_steps: int
    scheduler_warmup_steps: int
    scheduler_steps_per_optimizer_step: int
    precision: ResolvedPrecision
    optimizer: ResolvedOptimizer
    optimizer_class: str  # what the backend builds for `optimizer`
    gradient_checkpointing: bool
    compile_mode: str  # none, blocks, model or cuda-graphs: never auto
    batch_size: int  # images per micro-batch: the setting, or what auto chose for this GPU
    # Why checkpointing, compile mode and batch are what they are, one line each (`anima-lora plan` shows them).
    fast_path_reasons: tuple[str, ...] = ()
    buckets: list[tuple[int, int]]
    rope_patches: int  # RoPE positions per side the largest bucket needs

    @property
    def total_steps(self) -> int:
        return self.steps.total_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.steps.steps_per_epoch

    @property
    def max_bucket_side(self) -> int:
        return max(max(b) for b in self.buckets)

    def record(self) -> dict:
        """The numbers without the bucket list: for a state file or a log line."""
        return self.model_dump(mode="json", exclude={"buckets", "fast_path_reasons"})


def count_steps(samples_per_bucket: Mapping, batch_size: int, micro_batches_per_step: int, epochs: int) -> StepCount:
    """Count optimizer steps: one bucket per batch, partial batches and accumulations still step.

    `micro_batches_per_step` is gradient accumulation times data-parallel processes.

    Raises:
        ValueError: a count below 1 or a dataset with no samples.
    """
    if batch_size < 1 or micro_batches_per_step < 1 or epochs < 1:
        raise ValueError(
            f"batch_size, gradient_accumulation_steps and epochs must be >= 1, got {batch_size}, {micro_batches_per_step}, {epochs}"
        )
    samples = sum(n for n in samples_per_bucket.values() if n > 0)
    if samples == 0:
        raise ValueError("the dataset has no trainable samples; add images with captions")
    batches = batches_per_epoch(samples_per_bucket, batch_size)
    per_epoch = optimizer_steps_per_epoch(batches, micro_batches_per_step)
    return StepCount(
        steps_per_epoch=per_epoch, total_steps=per_epoch * epochs, batches_per_epoch=batches, samples_per_epoch=samples, epochs=epochs
    )


def warmup_steps(lr_warmup_steps: int, total_steps: int, lr_scheduler: str) -> int:
    """Warm-up steps both backends use: the setting, at most a tenth of the run (at least 1); 0 for constant.

    The seed's fixed 100 steps would swallow a short run (its LR never reached the target on runs of
    100 steps or fewer); a tenth keeps a real decay phase, and the seed's own runs of 1000 steps and
    more keep their 100. `constant` takes no warm-up (sd-scripts raises on one, diffusers ignores it).
    """
    if lr_scheduler == "constant" or lr_warmup_steps <= 0 or total_steps <= 0:
        return 0
    return min(lr_warmup_steps, max(1, total_steps // WARMUP_SHARE))


def resolve_precision(requested: str, machine: Machine) -> ResolvedPrecision:
    """auto = bf16 where the GPU has native bf16, fp16 on other GPUs (a T4 only emulates bf16); "no" without a GPU."""
    if not machine.gpu:
        if requested not in ("auto", "no"):
            log.warning("mixed_precision=%r needs a GPU; training in fp32 on the CPU", requested)
        return "no"
    if requested == "auto":
        return "bf16" if machine.bf16_native else "fp16"
    return requested  # type: ignore[return-value]


def resolve_optimizer(requested: str, backend: BackendNumbers) -> ResolvedOptimizer:
    """The optimizer name a backend builds for the setting (auto: the backend's own choice)."""
    return backend.auto_optimizer if requested == "auto" else requested  # type: ignore[return-value]


def optimizer_class(optimizer: ResolvedOptimizer, backend: BackendNumbers, machine: Machine) -> str:
    """The class the backend builds; for torch's AdamW also its kernel (fused on CUDA, foreach elsewhere)."""
    name = OPTIMIZER_CLASS[optimizer]
    if backend.adamw_kernel and optimizer == "adamw":
        name += "(fused)" if machine.gpu else "(foreach)"
    return name


def rope_patches_for(buckets: list[Bucket]) -> int:
    """RoPE positions per side that the largest bucket side needs."""
    return math.ceil(max(max(b) for b in buckets) / PIXELS_PER_PATCH)


def _fixed_by(config: TrainingConfig, backend: BackendNumbers, native: bool) -> tuple[str, str, str]:
    """Who set each of checkpointing, compile mode and batch: the user, or (under auto) a backend without the fast path."""
    theirs = f"the {backend.name} trainer's choice (it runs its own model code)"
    user = "your setting"
    if native:
        return user, user, user
    return (user if config.gradient_checkpointing is not None else theirs,
            user if config.compile_mode != "auto" or config.compile_blocks else theirs,
            user if config.batch_size else theirs)


def resolve_fast_path(config: TrainingConfig, samples_per_bucket: Mapping, machine: Machine, backend: BackendNumbers,
                      precision: ResolvedPrecision) -> FastPath:
    """Gradient checkpointing, compile mode and batch: the user's where set, else the fastest that fits the GPU.

    compile_blocks (the older switch) asks for blocks. A backend without the fast path keeps the seed's
    checkpointing, eager and batch 1 under auto. Deterministic per GPU model and dataset.
    """
    mode = config.compile_mode
    if mode == "auto" and config.compile_blocks:
        mode = "blocks"
    native = len(backend.compile_modes) > 1
    gc = config.gradient_checkpointing
    if gc is None and not native:
        gc = True  # kohya's code: the seed's setting, the only one measured there
    batch = config.batch_size or (0 if native else 1)
    # A backend's fp16 without our fp32 islands (sd-scripts') holds what bf16 holds.
    memory_precision = precision if backend.fp16_islands or precision != "fp16" else "bf16"
    req = Requested(gradient_checkpointing=gc, compile_mode=mode, batch_size=batch, resolution=config.resolution,
                    network_dim=config.network_dim, precision=memory_precision,
                    fixed_by=_fixed_by(config, backend, native))
    target = None if not machine.gpu else Target(machine.gpu_name, machine.memory_gib, machine.capability, machine.peak_tflops)
    micro = config.gradient_accumulation_steps * machine.processes
    counts = {k: n for k, n in samples_per_bucket.items() if n > 0}

    def steps_for(b: int) -> int:
        return count_steps(counts, b, micro, config.max_train_epochs).total_steps * config.gradient_accumulation_steps

    return choose(target, req, backend.compile_modes, steps_for, shapes=len(counts), max_batch=max(counts.values(), default=1))


def derive(config: TrainingConfig, samples_per_bucket: Mapping, machine: Machine, backend: BackendNumbers) -> Effective:
    """Every effective number of the run on `backend` (the registry's backend_for(config.trainer).numbers).

    Raises:
        ValueError: the dataset has no samples, or a count below 1.
    """
    micro = config.gradient_accumulation_steps * machine.processes
    if not any(n > 0 for n in samples_per_bucket.values()):
        count_steps(samples_per_bucket, 1, micro, config.max_train_epochs)  # raises its ValueError
    precision = resolve_precision(config.mixed_precision, machine)
    fast = resolve_fast_path(config, samples_per_bucket, machine, backend, precision)
    steps = count_steps(samples_per_bucket, fast.batch_size, micro, config.max_train_epochs)
    warmup = warmup_steps(config.lr_warmup_steps, steps.total_steps, config.lr_scheduler)
    optimizer = resolve_optimizer(config.optimizer, backend)
    buckets = make_buckets(config.resolution, config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps)
    if backend.scheduler_per_process:
        # sd-scripts' get_scheduler_fix (train_util.py line 5274) multiplies the training steps by the
        # processes, not the warm-up, and its prepared scheduler steps once per process.
        sched_total, sched_warmup, per_step = steps.total_steps * machine.processes, warmup, machine.processes
    else:
        # The native scheduler is stepped by the loop once per optimizer step, outside accelerate's
        # prepare (trainer/run.py): its counts are optimizer steps on any number of processes.
        sched_total, sched_warmup, per_step = steps.total_steps, warmup, 1
    return Effective(
        backend=backend.name,
        processes=machine.processes,
        micro_batches_per_step=micro,
        steps=steps,
        warmup_steps=warmup,
        lr_scheduler=config.lr_scheduler,
        scheduler_training_steps=sched_total,
        scheduler_warmup_steps=sched_warmup,
        scheduler_steps_per_optimizer_step=per_step,
        precision=precision,
        optimizer=optimizer,
        optimizer_class=optimizer_class(optimizer, backend, machine),
        gradient_checkpointing=fast.gradient_checkpointing,
        compile_mode=fast.compile_mode,
        batch_size=fast.batch_size,
        fast_path_reasons=fast.reasons,
        buckets=buckets,
        rope_patches=rope_patches_for(buckets),
    )
