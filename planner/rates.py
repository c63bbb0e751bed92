"""Seconds per optimizer step: a table per GPU (each row measured or estimated, with its source), scaled by FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..core.step_model import HOST_S, step_seconds, step_tflop
from .gpus import find_spec

__all__ = ["RATE_TABLE", "Rate", "RateRow", "lookup_rate", "step_tflop"]

Speed = Literal["fast", "slow"]  # fast: native bf16 or fp16 tensor cores; slow: fp32 or emulated bf16
Status = Literal["measured", "estimated"]

# "Estimated" rows without an Anima figure use: 30.2 TFLOP per 768² GC step (anima-internals §C) at 35% of
# the GPU's dense bf16/fp16 tensor peak, plus 0.3 s of launch overhead (the H100's bs1 figure is launch-bound).
_FORMULA = "30.2 TFLOP/step (anima-internals §C) at 35% of {peak} TFLOP/s + 0.3 s launch overhead"


@dataclass(frozen=True)
class RateRow:
    """Seconds per optimizer step on `gpu`, at the row's resolution, batch 1, gradient checkpointing on."""

    gpu: str
    speed: Speed
    sec_per_step: float
    resolution: int
    status: Status
    source: str
    gradient_checkpointing: bool = True


RATE_TABLE: tuple[RateRow, ...] = (
    RateRow("T4", "slow", 14.4, 768, "measured",
            "citron Colab README: 1000 steps 'over 4 hours' on a free T4, 768 px, dim 20, bf16 (emulated), cached; a lower bound"),
    RateRow("T4", "fast", 4.8, 768, "estimated",
            "SDXL LoRA on a Kaggle T4 in fp16 at 1024² ≈4.8 s/it (FurkanGozukara tutorial) x Anima ≈2x SDXL per step "
            "(hollowstrawberry/kohya-colab#333), scaled 1024²->768² by FLOPs"),
    RateRow("P100", "fast", 4.9, 768, "estimated", _FORMULA.format(peak="18.7 (fp16, no tensor cores)")),
    RateRow("V100", "fast", 1.0, 768, "estimated",
            _FORMULA.format(peak="125") + "; AnimaLoraStudio#315 saw 5.3 s/it at 1024² fp16 before a fix"),
    RateRow("V100 32GB", "fast", 1.0, 768, "estimated", "as the V100 row: the same chip with more memory"),
    RateRow("L4", "fast", 1.0, 768, "estimated", _FORMULA.format(peak="121")),
    RateRow("A10G", "fast", 1.5, 768, "estimated", _FORMULA.format(peak="70")),
    RateRow("A100 80GB", "fast", 0.6, 768, "estimated",
            _FORMULA.format(peak="312") + "; the same tensor peak as the 40 GB A100"),
    RateRow("A100", "fast", 0.6, 768, "estimated", _FORMULA.format(peak="312")),
    RateRow("H100", "fast", 0.688, 768, "measured",
            "issue 22: 688 ms/step at 768², bs1, rank 20, GC, bf16, diffusers' modules eager, random weights"),
    RateRow("H200", "fast", 0.688, 768, "estimated", "as the H100 row: same tensor throughput, bs1 is launch-bound"),
    RateRow("RTX 3060", "fast", 3.33, 768, "measured",
            "citron-anima-lora-trainer-ui troubleshooting doc: ≈3.33 s/it (UI defaults: 768 px, bs1, GC, bf16, cached)"),
    RateRow("RTX 3090", "fast", 2.7, 768, "estimated",
            _FORMULA.format(peak="35.6") + "; a LoKr run measured 2.5-3.37 s/it (wochenlong/lora-scripts-next#127)"),
    RateRow("RTX 4090", "fast", 2.8, 1024, "measured",
            "wochenlong/lora-scripts-next docs/anima-fast.md: 2.8 s/step at 1024², dim 16, bs1, GC, flash attn, no cache "
            "(sd-scripts standard mode: 7.1 s/step)"),
    RateRow("RTX 5070 Ti", "fast", 1.29, 1024, "measured",
            "AnimaLoraStudio#182: 5.15 s/it at 1024², rank 8, bs1 x grad-accum 4, bf16, GC (1.29 s per micro-batch)"),
    RateRow("RTX 5060 Ti", "fast", 2.5, 1024, "estimated",
            "RTX 5070 Ti row x 1.9 (70 vs 36 SMs); sorryhyun/anima_lora measured 1.1 s/step with per-block torch.compile"),
)
# No slow row measured: fp32 (or emulated bf16) costs this factor over the fast path. The T4's measured pair
# gives 3x; GPUs with TF32 tensor cores (sm_80+) lose less.
SLOW_FACTOR = {True: 2.0, False: 3.0}
# Data parallel: each GPU runs its own micro-batches at the one-GPU rate, plus one all-reduce of the
# LoRA gradients per step (~115 MB at rank 20, tens of ms over PCIe against a T4's 1-3 s step).
# Estimated, not measured: no multi-GPU row exists yet.
DATA_PARALLEL_OVERHEAD = 1.05


@dataclass(frozen=True)
class Rate:
    """A seconds-per-step figure for the planned settings, and where it came from."""

    sec_per_step: float | None
    status: Literal["measured", "estimated", "run-time"]
    source: str


def lookup_rate(
    gpu_name: str | None,
    fast: bool,
    resolution: int,
    batch_size: int,
    grad_accum: int,
    gradient_checkpointing: bool,
    bf16_native: bool = False,
    num_gpus: int = 1,
    compile_mode: str = "none",
) -> Rate:
    """Seconds per optimizer step for these settings, scaled from the GPU's row (eager, GC, batch 1) by the
    step model (core/step_model.py: compute or host bound, per compile mode), or by FLOPs alone for a GPU
    without a tensor peak in the table."""
    if gpu_name is None:
        return Rate(None, "run-time", "CPU: no table figure; measured once training starts")
    spec = find_spec(gpu_name)
    rows = [r for r in RATE_TABLE if spec and r.gpu == spec.name]
    if not rows:
        return Rate(None, "run-time", f"{gpu_name} is not in the speed table; measured once training starts")
    wanted = "fast" if fast else "slow"
    row = next((r for r in rows if r.speed == wanted), None)
    factor, note = 1.0, ""
    if row is None:
        row = next(r for r in rows if r.speed == "fast")
        factor = SLOW_FACTOR[bf16_native]
        note = f"; x{factor:g} for fp32/emulated bf16 (estimated)"
    if spec.peak_tflops:
        scale = (step_seconds(spec.peak_tflops, resolution, batch_size, gradient_checkpointing, compile_mode)
                 / step_seconds(spec.peak_tflops, row.resolution, 1, row.gradient_checkpointing, "none"))
    else:
        scale = step_tflop(resolution, batch_size, gradient_checkpointing) / step_tflop(row.resolution, 1, row.gradient_checkpointing)
    parallel = DATA_PARALLEL_OVERHEAD if num_gpus > 1 else 1.0
    seconds = row.sec_per_step * factor * scale * grad_accum * parallel
    same = (resolution, batch_size, gradient_checkpointing, compile_mode) == (row.resolution, 1, row.gradient_checkpointing, "none")
    exact = row.status == "measured" and same and factor == 1 and grad_accum == 1 and num_gpus == 1
    status: Literal["measured", "estimated"] = "measured" if exact else "estimated"
    where = f"{row.gpu} {row.speed} row at {row.resolution}px ({row.status}: {row.source})"
    figure = HOST_S[(compile_mode, gradient_checkpointing)]
    if (spec.name == "H100" and figure.status == "measured" and resolution == 768 and batch_size == 1 and factor == 1
            and grad_accum == 1 and num_gpus == 1):
        # The issue 22 harness measured this very setting: the figure itself, not a scaled one.
        return Rate(figure.value, "measured", f"H100 ({figure.source})")
    if scale != 1 or grad_accum != 1:
        how = "the step model" if spec.peak_tflops else "FLOPs"
        where += (f", scaled x{scale * grad_accum:.2f} by {how} for {resolution}px, batch {batch_size}, "
                  f"{'GC' if gradient_checkpointing else 'no GC'}, compile {compile_mode}, accumulation {grad_accum}")
    if num_gpus > 1:
        note += f"; x{parallel:g} for data parallel over {num_gpus} GPUs (estimated)"
    return Rate(round(seconds, 3), status, where + note)
