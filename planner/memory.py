"""Predicted peak VRAM for the settings, and the seed's OOM advice computed for this GPU."""

from __future__ import annotations

import itertools

from pydantic import BaseModel, Field

from ..core.step_model import USABLE_SHARE, predict_peak_gib

__all__ = ["MemoryEstimate", "MemoryOption", "check_memory", "predict_peak_gib", "USABLE_SHARE"]


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


def check_memory(
    resolution: int, batch_size: int, network_dim: int, gradient_checkpointing: bool, precision: str, available_gib: float | None,
    compile_mode: str = "none",
) -> MemoryEstimate:
    """Compare the predicted peak with the GPU; when it does not fit, list the smallest changes that would."""
    predicted = predict_peak_gib(resolution, batch_size, network_dim, gradient_checkpointing, precision, compile_mode)
    if available_gib is None:
        return MemoryEstimate(predicted_gib=predicted, available_gib=None, fits=None)
    budget = available_gib * USABLE_SHARE
    fits = predicted <= budget
    options = [] if fits else _fitting_options(resolution, batch_size, network_dim, gradient_checkpointing, precision, budget,
                                               compile_mode)
    status = "estimated"
    if (resolution, batch_size, network_dim, gradient_checkpointing, precision, compile_mode) == (768, 1, 20, False, "bf16", "cuda-graphs"):
        status = "estimated; issue 22 measured 10.9 GiB allocated for this setting on an H100"
    return MemoryEstimate(predicted_gib=predicted, available_gib=available_gib, fits=fits, options=options, status=status)


def _fitting_options(resolution, batch_size, network_dim, gc, precision, budget, compile_mode="none") -> list[MemoryOption]:
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
            peak = predict_peak_gib(precision=precision, compile_mode=compile_mode, **settings)
            if peak <= budget:
                found.append(MemoryOption(changes=dict(combo), predicted_gib=peak))
        if found:  # the fewest changes that fit; bigger combinations would only cost more quality
            return found
    return []
