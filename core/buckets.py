"""Aspect-ratio buckets and the batch arithmetic that the planner and the trainer share.

A batch holds images of one bucket only, so every bucket ends its epoch with a partial batch of its
own. Both the planner's step count and the trainer's sampler come from `batches_per_epoch`, which is
why their numbers agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

Bucket = tuple[int, int]  # (width, height) in pixels


def make_buckets(resolution: int, min_side: int = 256, max_side: int = 4096, step: int = 64) -> list[Bucket]:
    """Bucket sizes whose area is at most resolution², sides multiples of `step` within [min_side, max_side]."""
    max_area = resolution * resolution
    buckets: set[Bucket] = set()
    square = (resolution // step) * step
    buckets.add((square, square))
    width = _round_up(min_side, step)
    while width <= max_side:
        height = min(max_side, (max_area // width) // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def assign_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to the image's (ties go to the larger area)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    ratio = width / height
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - ratio), -(b[0] * b[1])))


def cover_size(width: int, height: int, bucket: Bucket) -> tuple[float, tuple[int, int]]:
    """(scale, resized size) of an image resized to cover `bucket` before its centre crop.

    The trainer's image loader and the validator's crop warning both use it, so what the
    validator says is cut away is what training really cuts away.
    """
    scale = max(bucket[0] / width, bucket[1] / height)
    return scale, (max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale)))


def batches_per_epoch(samples_per_bucket: Mapping[Bucket, int] | Iterable[int], batch_size: int) -> int:
    """Micro-batches in one epoch: each bucket's samples (images x repeats) split into batches."""
    counts = samples_per_bucket.values() if isinstance(samples_per_bucket, Mapping) else samples_per_bucket
    return sum(math.ceil(n / batch_size) for n in counts if n > 0)


def optimizer_steps_per_epoch(batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps per epoch; a trailing partial accumulation still steps (as sd-scripts counts it)."""
    return math.ceil(batches / gradient_accumulation_steps)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
