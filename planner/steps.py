"""Step arithmetic for the planner's suggestions; the counting itself is effective.py's (one place)."""

from __future__ import annotations

from collections.abc import Mapping

from ..effective import StepCount, count_steps

__all__ = ["StepCount", "count_steps", "with_repeats"]


def with_repeats(samples_per_bucket: Mapping, current: int, new: int) -> dict | None:
    """Samples per bucket if every image used `new` repeats instead of `current`.

    None when the counts are not all multiples of `current` (kohya folder repeats differ per folder,
    so --repeats alone cannot be solved for).
    """
    if current < 1 or any(n % current for n in samples_per_bucket.values()):
        return None
    return {bucket: n // current * new for bucket, n in samples_per_bucket.items()}
