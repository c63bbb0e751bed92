"""Step arithmetic: the numbers the trainer will report, from the shared bucket functions."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from anima_lora_flow.dataset.buckets import batches_per_epoch, optimizer_steps_per_epoch


class StepCount(BaseModel):
    """Per-epoch and total counts; `total_steps` counts optimizer steps (what sd-scripts calls "it")."""

    steps_per_epoch: int
    total_steps: int
    batches_per_epoch: int
    samples_per_epoch: int
    epochs: int = 1


def count_steps(samples_per_bucket: Mapping, batch_size: int, grad_accum: int, epochs: int) -> StepCount:
    """Count steps the way the trainer does: one bucket per batch, partial batches and accumulations step.

    Raises:
        ValueError: a count below 1 or a dataset with no samples.
    """
    if batch_size < 1 or grad_accum < 1 or epochs < 1:
        raise ValueError(f"batch_size, gradient_accumulation_steps and epochs must be >= 1, got {batch_size}, {grad_accum}, {epochs}")
    samples = sum(n for n in samples_per_bucket.values() if n > 0)
    if samples == 0:
        raise ValueError("the dataset has no trainable samples; add images with captions")
    batches = batches_per_epoch(samples_per_bucket, batch_size)
    per_epoch = optimizer_steps_per_epoch(batches, grad_accum)
    return StepCount(
        steps_per_epoch=per_epoch,
        total_steps=per_epoch * epochs,
        batches_per_epoch=batches,
        samples_per_epoch=samples,
        epochs=epochs,
    )


def with_repeats(samples_per_bucket: Mapping, current: int, new: int) -> dict | None:
    """Samples per bucket if every image used `new` repeats instead of `current`.

    None when the counts are not all multiples of `current` (kohya folder repeats differ per folder,
    so --repeats alone cannot be solved for).
    """
    if current < 1 or any(n % current for n in samples_per_bucket.values()):
        return None
    return {bucket: n // current * new for bucket, n in samples_per_bucket.items()}
