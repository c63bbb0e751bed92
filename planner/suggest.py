"""Solve for settings that fit a step budget, with the real bucket arithmetic (not by halving)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from .steps import count_steps, with_repeats


def max_steps_within(seconds: float, sec_per_step: float) -> int:
    """Whole optimizer steps that fit in `seconds`."""
    if sec_per_step <= 0:
        raise ValueError(f"sec_per_step must be positive, got {sec_per_step}")
    return max(0, math.floor(seconds / sec_per_step))


def largest_epochs(samples_per_bucket: Mapping, batch_size: int, grad_accum: int, epochs: int, max_steps: int) -> int | None:
    """The most epochs (<= `epochs`) whose total steps stay within `max_steps`; None if not even one."""
    per_epoch = count_steps(samples_per_bucket, batch_size, grad_accum, 1).steps_per_epoch
    best = min(epochs, max_steps // per_epoch)
    return best if best >= 1 else None


def largest_repeats(
    samples_per_bucket: Mapping, repeats: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int
) -> int | None:
    """The most repeats (<= `repeats`) whose total steps stay within `max_steps`.

    None when even 1 repeat is too long, or when per-folder (kohya) repeats mean --repeats cannot be solved for.
    """
    for candidate in range(repeats, 0, -1):
        samples = with_repeats(samples_per_bucket, repeats, candidate)
        if samples is None:
            return None
        if count_steps(samples, batch_size, grad_accum, epochs).total_steps <= max_steps:
            return candidate
    return None
