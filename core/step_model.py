"""What one training step costs in time and memory, per compile mode, and the fastest setting that fits.

Both numbers come from one model so that the trainer (through effective.py) and the planner read one
answer. Every constant says whether it was measured or estimated, and where it comes from.

Time: a step takes max(compute, host) seconds. compute = the step's FLOPs at the GPU's tensor peak
times an efficiency per mode; host = launching the step's kernels from Python, which does not depend on
the batch and, at batch 1 on an H100, is the whole step (issue 22: 688 ms eager against a 38 ms FLOP
limit). The host floors are the H100's measured times, taken to hold on other GPUs too (they are set
by the host, not the GPU; estimated). On a slow GPU the compute term wins and compiling gains only
its fusion (efficiency 0.35 -> 0.43).

Memory: fitted to anima-internals §C (H100, synthetic Anima-shaped DiT + rank-16 LoRA, AdamW, bf16, 768²):
GC 4.02 GiB at bs1 / 5.65 at bs4, no GC 9.47 / 27.4 -> peak = 3.48 + batch x per-sample activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import setting

CompileMode = Literal["none", "blocks", "model", "cuda-graphs"]
COMPILE_MODES: tuple[CompileMode, ...] = ("none", "blocks", "model", "cuda-graphs")


def cuda_graphs_need_cuda() -> str:
    """Why compile_mode cuda-graphs cannot run here: the plan's refusal and the trainer's say the same."""
    return (f"{setting('compile_mode', 'cuda-graphs')} needs a CUDA GPU and this machine has none; use "
            f"{setting('compile_mode', 'model')} (the same compiled step without CUDA graphs) or {setting('compile_mode', 'auto')}")

# --- memory -------------------------------------------------------------------------------------------
STATIC_GIB = 3.48  # DiT blocks in bf16 + rank-16 LoRA with its optimizer state (measured fit)
REAL_MODEL_EXTRA_GIB = 0.35  # LLM adapter, embedders and final layer the stand-in lacked (estimated)
LORA_GIB_PER_RANK = 0.021  # ~1.43 M LoRA params per rank x 16 B (fp32 weight, grad, two moments), estimated
ACTIVATION_GIB_768 = {True: 0.54, False: 5.98}  # per sample at 768², with / without gradient checkpointing
FP32_WEIGHTS_EXTRA_GIB = 3.9  # mixed_precision "no" keeps the 2.09 B DiT in fp32 (estimated)
FP16_ISLANDS_EXTRA_GIB = 0.45  # fp16: adaLN weights in fp32 (176 M params, +0.35) and fp32 residuals (estimated)
CUDA_CONTEXT_GIB = 0.75  # CUDA context and allocator slack: 0.5-1 GiB (estimated)
# CUDA graphs keep a private memory pool with every captured intermediate alive (estimated: issue 22's
# measured 10.9 GiB allocated peak, no GC, bs1, minus this model's 9.9 GiB without the context).
CUDA_GRAPHS_EXTRA_GIB = 1.0
USABLE_SHARE = 0.95  # leave room for fragmentation


def predict_peak_gib(resolution: int, batch_size: int, network_dim: int, gradient_checkpointing: bool,
                     precision: str = "bf16", compile_mode: str = "none") -> float:
    """Peak GiB for DiT + LoRA training with cached latents and text embeddings (VAE and Qwen3 unloaded).

    precision: "bf16", "fp16" (the native trainer's fp32 islands, trainer/fp16.py) or "no" (fp32 weights).
    """
    tokens_ratio = (resolution / 768) ** 2  # SDPA keeps attention memory linear in tokens
    activations = batch_size * ACTIVATION_GIB_768[gradient_checkpointing] * tokens_ratio
    lora = (network_dim - 16) * LORA_GIB_PER_RANK
    extra = {"no": FP32_WEIGHTS_EXTRA_GIB, "fp16": FP16_ISLANDS_EXTRA_GIB}.get(precision, 0.0)
    graphs = CUDA_GRAPHS_EXTRA_GIB if compile_mode == "cuda-graphs" else 0.0
    return round(STATIC_GIB + REAL_MODEL_EXTRA_GIB + extra + lora + activations + graphs + CUDA_CONTEXT_GIB, 2)


# --- time ---------------------------------------------------------------------------------------------
H100_PEAK_TFLOPS = 989.0  # dense bf16
# issue 22: the step's FLOP limit on an H100 at 768 px, batch 1 (measured harness, computed limit).
FLOP_LIMIT_768_S = 0.038  # with checkpointing; without: scaled by step_tflop (0.026 s)
UNKNOWN_PEAK_TFLOPS = 100.0  # a GPU missing from core/gpus.py (estimated: an L4-class card)


@dataclass(frozen=True)
class Figure:
    value: float
    status: Literal["measured", "estimated"]
    source: str


_ISSUE22 = "issue 22, H100, random weights, 768 px, rank 20, batch 1, one harness"
# Share of the tensor peak the step's kernels reach when compute-bound.
EFFICIENCY: dict[str, Figure] = {
    "none": Figure(0.35, "estimated", "eager kernels without fusion; the planner's rate formula uses 35%"),
    "blocks": Figure(0.43, "measured", "issue 22: batch 4, blocks compiled, 88 ms/image = 43% of the H100's peak"),
    "model": Figure(0.43, "estimated", "as blocks: the same fused kernels, fewer launches"),
    "cuda-graphs": Figure(0.43, "estimated", "as blocks: the same kernels, replayed"),
}
# Host floor per step (s) by (mode, gradient checkpointing): launches from Python, batch-independent.
HOST_S: dict[tuple[str, bool], Figure] = {
    ("none", True): Figure(0.688, "measured", _ISSUE22 + ": 688 ms eager"),
    ("blocks", True): Figure(0.330, "measured", _ISSUE22 + ": 300-357 ms with each block compiled"),
    ("model", True): Figure(0.226, "measured", _ISSUE22 + ": 226 ms with the whole model compiled"),
    ("cuda-graphs", True): Figure(0.117, "estimated", "the measured 87.9 ms without GC x 4/3 (GC re-runs the forward)"),
    ("none", False): Figure(0.516, "estimated", "688 ms x 3/4: without GC the forward's launches run once"),
    ("blocks", False): Figure(0.248, "estimated", "330 ms x 3/4 (no recomputed forward)"),
    ("model", False): Figure(0.170, "estimated", "226 ms x 3/4 (no recomputed forward)"),
    ("cuda-graphs", False): Figure(0.0879, "measured", _ISSUE22 + ": 87.9 ms (±3), whole model compiled + CUDA graphs, no GC"),
}
# One-off compile time per bucket shape (each shape is its own static graph), estimated: torch.compile of
# one 28-block DiT forward+backward takes about a minute on a server CPU; blocks compile one block.
COMPILE_S: dict[str, Figure] = {
    "none": Figure(0.0, "measured", "no compilation"),
    "blocks": Figure(40.0, "estimated", "one block's graph, reused by all 28"),
    "model": Figure(90.0, "estimated", "the whole forward and backward"),
    "cuda-graphs": Figure(120.0, "estimated", "the whole model plus capture and warm-up replays"),
}


def step_tflop(resolution: int, batch_size: int = 1, gradient_checkpointing: bool = True) -> float:
    """TFLOP of one LoRA micro-batch step on the DiT (anima-internals §C formulas; 768² GC ≈ 30.1)."""
    tokens = (resolution / 16) ** 2  # 8x VAE downsampling, 2x2 patches
    linear = 2 * tokens * 1.644e9 + 0.120e12  # token-wise weights + cross-attn K/V on 512 context tokens
    attention = 4 * tokens * tokens * 2048 * 28 + 4 * tokens * 512 * 2048 * 28
    lora = 0.096e12 * tokens / 2304
    # Frozen base: backward ≈ 1x forward for linears, 2.5x for attention; checkpointing adds one forward.
    flops = 2 * linear + 3.5 * attention + 3 * lora
    if gradient_checkpointing:
        flops += linear + attention
    return batch_size * flops / 1e12


def step_seconds(peak_tflops: float | None, resolution: int, batch_size: int, gradient_checkpointing: bool, mode: str) -> float:
    """Predicted seconds of one micro-batch step: max(compute at the mode's efficiency, the host floor)."""
    peak = peak_tflops or UNKNOWN_PEAK_TFLOPS
    flops = step_tflop(resolution, batch_size, gradient_checkpointing) / step_tflop(768, 1, True)
    compute = FLOP_LIMIT_768_S * flops * (H100_PEAK_TFLOPS / peak) / EFFICIENCY[mode].value
    return max(compute, HOST_S[(mode, gradient_checkpointing)].value)


def forward_seconds(peak_tflops: float | None, resolution: int, mode: str = "none") -> float:
    """One inference forward at batch 1 (sampling, validation): a third of a step without GC (estimated:
    the frozen backward costs about two forwards)."""
    return step_seconds(peak_tflops, resolution, 1, False, mode) / 3


# --- the choice ---------------------------------------------------------------------------------------
MAX_AUTO_BATCH = 16


@dataclass(frozen=True)
class Target:
    """What the choice needs to know about the GPU (None fields: no GPU)."""

    name: str | None = None
    memory_gib: float | None = None
    capability: tuple[int, int] | None = None
    peak_tflops: float | None = None


@dataclass(frozen=True)
class Requested:
    gradient_checkpointing: bool | None  # None: auto
    compile_mode: str  # "auto" or a mode
    batch_size: int  # 0: auto
    resolution: int
    network_dim: int
    precision: str  # resolved: bf16, fp16 or no (fp16 without fp32 islands is passed as bf16)
    # Who fixed each of (checkpointing, compile mode, batch) that is not auto: the user, or a backend
    # without the fast path.
    fixed_by: tuple[str, str, str] = ("your setting",) * 3


@dataclass(frozen=True)
class FastPath:
    gradient_checkpointing: bool
    compile_mode: str
    batch_size: int
    predicted_gib: float
    sec_per_step: float | None  # the model's micro-batch step, for the reasons (None on a CPU)
    reasons: tuple[str, ...] = field(default=())


def allowed_modes(target: Target, backend_modes: tuple[str, ...], precision: str) -> tuple[list[str], list[str]]:
    """(modes auto may pick here, why the others are out)."""
    why = []
    modes = [m for m in COMPILE_MODES if m in backend_modes]
    if len(modes) < len(COMPILE_MODES):
        why.append("this trainer backend runs its own model code: no compile modes")
    if target.capability is not None and target.capability < (7, 0):
        modes = ["none"]
        why.append("torch.compile's Triton kernels need sm_70 or newer")
    if precision == "fp16" and "cuda-graphs" in modes:
        modes.remove("cuda-graphs")
        why.append("fp16's loss scaler reads its inf check on the host every step, which a CUDA graph cannot capture")
    return modes, why


def choose(target: Target | None, req: Requested, backend_modes: tuple[str, ...], steps_for: Callable[[int], int],
           shapes: int, max_batch: int) -> FastPath:
    """The fastest (checkpointing, compile mode, batch) that fits the GPU; explicit settings are kept.

    steps_for(batch): micro-batch steps of the run at that batch; shapes: bucket shapes the run trains
    (each one compiles once); max_batch: the most samples any bucket holds (a bigger batch is never full).
    """
    if target is None or target.memory_gib is None:
        return _cpu(req, backend_modes)
    modes, excluded = allowed_modes(target, backend_modes, req.precision)
    if len(backend_modes) == 1 and req.fixed_by[1] != "your setting":
        excluded = [req.fixed_by[1]]  # names the backend
    gcs = [req.gradient_checkpointing] if req.gradient_checkpointing is not None else [False, True]
    if req.compile_mode != "auto":
        modes = [req.compile_mode]
    top = max(1, min(MAX_AUTO_BATCH, max_batch))
    batches = [req.batch_size] if req.batch_size else list(range(1, top + 1))
    budget = target.memory_gib * USABLE_SHARE
    candidates = []
    for gc in gcs:
        for mode in modes:
            for batch in batches:
                peak = predict_peak_gib(req.resolution, batch, req.network_dim, gc, req.precision, mode)
                sec = step_seconds(target.peak_tflops, req.resolution, batch, gc, mode)
                total = steps_for(batch) * sec + shapes * COMPILE_S[mode].value
                candidates.append((peak <= budget, total, gc, mode, batch, peak, sec))
    fitting = [c for c in candidates if c[0]]
    if fitting:
        best_total = min(c[1] for c in fitting)
        # Within 2% of the fastest the model cannot tell them apart: take the largest batch, then the
        # cheaper compile, then checkpointing off (GC only saves memory).
        near = [c for c in fitting if c[1] <= best_total * 1.02]
        pick = min(near, key=lambda c: (-c[4], COMPILE_S[c[3]].value, c[2]))
    else:  # nothing fits: the least memory, and the plan's memory warning says what to change
        pick = min(candidates, key=lambda c: (c[5], c[1]))
    _, total, gc, mode, batch, peak, sec = pick
    reasons = _reasons(target, req, pick, candidates, excluded, bool(fitting))
    return FastPath(gc, mode, batch, peak, round(sec, 4), tuple(reasons))


def _cpu(req: Requested, backend_modes: tuple[str, ...]) -> FastPath:
    reasons = []
    gc = req.gradient_checkpointing
    if gc is None:
        gc = False
        reasons.append("gradient checkpointing off: no GPU, so memory is the host's and recomputing only costs time")
    else:
        reasons.append(f"gradient checkpointing {_onoff(gc)}: {req.fixed_by[0]}")
    mode = req.compile_mode
    if mode == "auto":
        mode = "none"
        reasons.append("compile none (eager): no GPU; compiling pays off only on a GPU")
    elif mode not in backend_modes:
        mode = "none"
        reasons.append("compile none: this trainer backend runs its own model code")
    else:
        reasons.append(f"compile {mode}: {req.fixed_by[1]}")
    batch = req.batch_size or 1
    reasons.append(f"batch {batch}: " + (_batch_note(req) if req.batch_size else "auto without a GPU to size it is 1"))
    peak = predict_peak_gib(req.resolution, batch, req.network_dim, gc, req.precision, mode)
    return FastPath(gc, mode, batch, peak, None, tuple(reasons))


def _onoff(value: bool) -> str:
    return "on" if value else "off"


def _batch_note(req: Requested) -> str:
    return req.fixed_by[2] + (" (0 = auto: the largest that fits)" if req.fixed_by[2] == "your setting" else "")


def _reasons(target: Target, req: Requested, pick, candidates, excluded: list[str], fits: bool) -> list[str]:
    _, total, gc, mode, batch, peak, sec = pick
    name = target.name or "this GPU"
    budget = target.memory_gib * USABLE_SHARE
    peak_note = "" if target.peak_tflops else f" ({name} is not in the GPU table: its speed is guessed)"
    out = []
    if req.gradient_checkpointing is not None:
        out.append(f"gradient checkpointing {_onoff(gc)}: {req.fixed_by[0]}")
    elif not gc:
        out.append(f"gradient checkpointing off: {peak:.1f} GiB predicted fits {name}'s {budget:.1f} usable GiB, "
                   f"and not recomputing the forward is faster")
    else:
        off = [c for c in candidates if c[2] is False and c[3] == mode and c[4] == batch]
        why = f"without it {off[0][5]:.1f} GiB would not fit {name}'s {budget:.1f} usable GiB" if off and not off[0][0] else \
            "the fastest fitting setting"
        out.append(f"gradient checkpointing on: {why}")
    eager = next((c for c in candidates if c[2] == gc and c[3] == "none" and c[4] == batch), None)
    if req.compile_mode != "auto":
        out.append(f"compile {mode}: {req.fixed_by[1]}")
    elif mode == "none" and excluded and all(c[3] == "none" for c in candidates):
        out.append(f"compile none (eager): {'; '.join(excluded)}")
    else:
        gain = f"; eager ~{eager[6] * 1000:.0f} ms" if eager and mode != "none" else ""
        text = f"compile {mode}: ~{sec * 1000:.0f} ms/step predicted{gain}, {COMPILE_S[mode].value:.0f} s of compiling per bucket shape"
        if mode == "none":
            text = f"compile none (eager): compiling would not pay back its time on this run{peak_note}"
        out.append(text + (f" ({'; '.join(excluded)})" if excluded else "") + peak_note * (mode != "none"))
    if req.batch_size:
        out.append(f"batch {batch}: {_batch_note(req)}")
    else:
        out.append(f"batch {batch}: the largest that fits ({peak:.1f} GiB) without slowing the run (auto)")
    if not fits:
        out.append(f"nothing fits {name}'s {budget:.1f} usable GiB: the smallest setting is planned ({peak:.1f} GiB)")
    return out
