"""Predicted peak VRAM for the settings, and the seed's OOM advice computed for this GPU."""

from __future__ import annotations

import itertools

from pydantic import BaseModel, Field

# Fitted to anima-internals §C (H100, synthetic Anima-shaped DiT + rank-16 LoRA, AdamW, bf16, 768²):
# GC 4.02 GiB at bs1 / 5.65 at bs4, no GC 9.47 / 27.4  ->  peak = 3.48 + batch x per-sample activations.
STATIC_GIB = 3.48  # DiT blocks in bf16 + rank-16 LoRA with its optimizer state (measured fit)
REAL_MODEL_EXTRA_GIB = 0.35  # LLM adapter, embedders and final layer the stand-in lacked (estimated)
LORA_GIB_PER_RANK = 0.021  # ~1.43 M LoRA params per rank x 16 B (fp32 weight, grad, two moments), estimated
ACTIVATION_GIB_768 = {True: 0.54, False: 5.98}  # per sample at 768², with / without gradient checkpointing
FP32_WEIGHTS_EXTRA_GIB = 3.9  # mixed_precision "no" keeps the 2.09 B DiT in fp32 (estimated)
FP16_ISLANDS_EXTRA_GIB = 0.45  # fp16: adaLN weights in fp32 (176 M params, +0.35) and fp32 residuals (estimated)
CUDA_CONTEXT_GIB = 0.75  # CUDA context and allocator slack: 0.5-1 GiB (estimated)
USABLE_SHARE = 0.95  # leave room for fragmentation


class MemoryOption(BaseModel):
    """A change of settings and the peak it would need."""

    changes: dict[str, int | bool]
    predicted_gib: float


class MemoryEstimate(BaseModel):
    """Predicted peak against the GPU's memory; `options` only lists changes that would fit."""

    predicted_gib: float
    available_gib: float | None
    fits: bool | None
    status: str = "estimated"
    source: str = "fit to anima-internals §C H100 measurements, scaled linearly by tokens and batch"
    options: list[MemoryOption] = Field(default_factory=list)


def predict_peak_gib(resolution: int, batch_size: int, network_dim: int, gradient_checkpointing: bool, precision: str = "bf16") -> float:
    """Peak GiB for DiT + LoRA training with cached latents and text embeddings (VAE and Qwen3 unloaded).

    precision: "bf16", "fp16" (the native trainer's fp32 islands, trainer/fp16.py) or "no" (fp32 weights).
    """
    tokens_ratio = (resolution / 768) ** 2  # SDPA keeps attention memory linear in tokens
    activations = batch_size * ACTIVATION_GIB_768[gradient_checkpointing] * tokens_ratio
    lora = (network_dim - 16) * LORA_GIB_PER_RANK
    extra = {"no": FP32_WEIGHTS_EXTRA_GIB, "fp16": FP16_ISLANDS_EXTRA_GIB}.get(precision, 0.0)
    weights = STATIC_GIB + REAL_MODEL_EXTRA_GIB + extra
    return round(weights + lora + activations + CUDA_CONTEXT_GIB, 2)


def check_memory(
    resolution: int, batch_size: int, network_dim: int, gradient_checkpointing: bool, precision: str, available_gib: float | None
) -> MemoryEstimate:
    """Compare the predicted peak with the GPU; when it does not fit, list the smallest changes that would."""
    predicted = predict_peak_gib(resolution, batch_size, network_dim, gradient_checkpointing, precision)
    if available_gib is None:
        return MemoryEstimate(predicted_gib=predicted, available_gib=None, fits=None)
    budget = available_gib * USABLE_SHARE
    fits = predicted <= budget
    options = [] if fits else _fitting_options(resolution, batch_size, network_dim, gradient_checkpointing, precision, budget)
    return MemoryEstimate(predicted_gib=predicted, available_gib=available_gib, fits=fits, options=options)


def _fitting_options(resolution, batch_size, network_dim, gc, precision, budget) -> list[MemoryOption]:
    """The seed's advice (GC, dim 8, 512 px) plus batch 1, tried one change at a time, then in pairs, ..."""
    candidates = []
    if not gc:
        candidates.append(("gradient_checkpointing", True))
    if batch_size > 1:
        candidates.append(("batch_size", 1))
    if network_dim > 8:
        candidates.append(("network_dim", 8))
    if resolution > 512:
        candidates.append(("resolution", 512))
    for size in range(1, len(candidates) + 1):
        found = []
        for combo in itertools.combinations(candidates, size):
            settings = {"resolution": resolution, "batch_size": batch_size, "network_dim": network_dim, "gradient_checkpointing": gc}
            settings.update(dict(combo))
            peak = predict_peak_gib(precision=precision, **settings)
            if peak <= budget:
                found.append(MemoryOption(changes=dict(combo), predicted_gib=peak))
        if found:  # the fewest changes that fit; bigger combinations would only cost more quality
            return found
    return []
