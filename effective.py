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


# The latent is 1/8 of the image and the DiT patches it 2x2: one RoPE position per 16 pixels.
PIXELS_PER_PATCH = 16
WARMUP_SHARE = 10  # warm-up is at most a tenth of the run


class Machine(BaseModel):
    """What the numbers depend on about the hardware."""

    model_config = ConfigDict(frozen=True)

    gpu: bool = False
    bf16_native: bool = False
    processes: int = 1  # data-parallel training processes (one per GPU)

    @classmethod
    def from_gpu(cls, gpu, processes: int = 1) -> "Machine":
        """From a core.gpu.GpuInfo (detected or named in the planner's table), or None for no GPU."""
        return cls(gpu=gpu is not None, bf16_native=bool(gpu is not None and gpu.bf16_native), processes=processes)

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
        return self.model_dump(mode="json", exclude={"buckets"})


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


def resolve_compile_mode(config: TrainingConfig, machine: Machine) -> str:
    """The compile mode the step runs with; an explicit choice wins, compile_blocks means blocks.

    auto is eager until the planner's per-GPU choice replaces this rule (issue 22).
    """
    if config.compile_mode != "auto":
        return config.compile_mode
    return "blocks" if config.compile_blocks else "none"


def derive(config: TrainingConfig, samples_per_bucket: Mapping, machine: Machine, backend: BackendNumbers) -> Effective:
    """Every effective number of the run on `backend` (the registry's backend_for(config.trainer).numbers).

    Raises:
        ValueError: the dataset has no samples, or a count below 1.
    """
    micro = config.gradient_accumulation_steps * machine.processes
    steps = count_steps(samples_per_bucket, config.batch_size, micro, config.max_train_epochs)
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
        precision=resolve_precision(config.mixed_precision, machine),
        optimizer=optimizer,
        optimizer_class=optimizer_class(optimizer, backend, machine),
        gradient_checkpointing=config.gradient_checkpointing,
        compile_mode=resolve_compile_mode(config, machine),
        buckets=buckets,
        rope_patches=rope_patches_for(buckets),
    )
