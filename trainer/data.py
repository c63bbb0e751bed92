"""The bucket sampler and batch assembly: data order is a pure function of (seed, epoch).

No torch DataLoader: every latent and context is already in memory after caching, so workers would
add process start-up and nothing else, and a pure function makes resume mid-epoch trivial (skip the
groups already consumed).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.buckets import batches_per_epoch, optimizer_steps_per_epoch
from ..core.train_items import TrainItem, samples_per_bucket

from .cache import TrainingCache

Group = list[list[int]]  # the micro-batches (lists of item indices) of one optimizer step


@dataclass(frozen=True)
class BucketSampler:
    """Batches of one bucket each; within an epoch, buckets' batches are shuffled together."""

    buckets: tuple[tuple[int, ...], ...]  # item indices per bucket, each repeated `repeats` times
    batch_size: int
    micro_batches_per_step: int  # gradient accumulation times data-parallel processes
    seed: int

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch([len(b) for b in self.buckets], self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, by the planner's own functions (so the two counts agree)."""
        return optimizer_steps_per_epoch(self.batches_per_epoch, self.micro_batches_per_step)

    def epoch_groups(self, epoch: int) -> list[Group]:
        """The optimizer steps of `epoch`, each a list of micro-batches; the last group may be short."""
        rng = random.Random(f"{self.seed}:{epoch}")  # string seeds hash stably across processes
        batches = []
        for samples in self.buckets:
            order = list(samples)
            rng.shuffle(order)
            batches += [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        rng.shuffle(batches)
        k = self.micro_batches_per_step
        return [batches[i : i + k] for i in range(0, len(batches), k)]


def build_sampler(items: Sequence[TrainItem], batch_size: int, micro_batches_per_step: int, seed: int) -> BucketSampler:
    """A sampler whose batch count equals core.buckets.batches_per_epoch(samples_per_bucket(items))."""
    per_bucket: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        per_bucket.setdefault(tuple(item.bucket), []).extend([index] * item.repeats)
    sampler = BucketSampler(
        tuple(tuple(per_bucket[b]) for b in sorted(per_bucket)), batch_size, micro_batches_per_step, seed
    )
    expected = batches_per_epoch(samples_per_bucket(list(items)), batch_size)
    if sampler.batches_per_epoch != expected:  # a bug guard: the planner and the trainer must agree
        raise RuntimeError(f"sampler has {sampler.batches_per_epoch} batches per epoch, planner {expected}")
    return sampler


def collate(
    indices: list[int], cache: TrainingCache, generator: torch.Generator, caption_dropout: float, device: torch.device
) -> dict[str, torch.Tensor]:
    """Latents (B,16,1,h,w) and contexts (B, context_length, dim); dropped captions get the empty context.

    The dropout draw uses the training generator so that a resumed run drops the same captions, and
    the choice is made on the device with `torch.where`: reading the draw back (`.tolist()`) would
    stall the GPU once per step.
    """
    # Item by item to the device, then stacked there: a cache on the device moves nothing, and a pinned
    # one is copied asynchronously (torch.stack on the host would make a pageable, synchronous copy).
    context = torch.stack([_pad(cache.contexts[i].to(device, non_blocking=True), cache.context_length) for i in indices])
    if caption_dropout > 0:
        drop = torch.rand(len(indices), generator=generator, device=generator.device) < caption_dropout
        empty = _pad(cache.empty_context.to(device, non_blocking=True), cache.context_length)
        context = torch.where(drop.to(device).view(-1, 1, 1), empty.unsqueeze(0), context)
    return {
        "latents": torch.stack([cache.latents[i].to(device, non_blocking=True) for i in indices]),
        "context": context,
    }


def _pad(ctx: torch.Tensor, length: int) -> torch.Tensor:
    """Zero rows after the prompt up to the DiT's fixed context length (as every implementation does)."""
    return torch.cat([ctx, ctx.new_zeros(length - ctx.shape[0], ctx.shape[1])])
