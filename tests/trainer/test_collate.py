"""Caption dropout in a batch: dropped rows get the padded empty-caption context, the rest their own."""

from __future__ import annotations

import torch

from anima_lora_flow.trainer.cache import TrainingCache
from anima_lora_flow.trainer.data import collate


def _cache():
    contexts = [torch.full((3, 4), float(i + 1)) for i in range(4)]
    latents = [torch.zeros(16, 1, 2, 2) for _ in range(4)]
    return TrainingCache(latents=latents, contexts=contexts, empty_context=torch.full((1, 4), -1.0), context_length=5)


def test_no_dropout_keeps_every_caption_padded():
    batch = collate([0, 2], _cache(), torch.Generator().manual_seed(0), 0.0, torch.device("cpu"))
    assert batch["context"].shape == (2, 5, 4)
    assert torch.equal(batch["context"][1, :3], torch.full((3, 4), 3.0))
    assert torch.equal(batch["context"][1, 3:], torch.zeros(2, 4))


def test_full_dropout_gives_the_empty_context_everywhere():
    batch = collate([0, 1, 2], _cache(), torch.Generator().manual_seed(0), 1.0, torch.device("cpu"))
    expected = torch.cat([torch.full((1, 4), -1.0), torch.zeros(4, 4)])
    assert all(torch.equal(row, expected) for row in batch["context"])


def test_dropout_draw_is_reproducible_from_the_generator():
    a = collate([0, 1, 2, 3], _cache(), torch.Generator().manual_seed(7), 0.5, torch.device("cpu"))
    b = collate([0, 1, 2, 3], _cache(), torch.Generator().manual_seed(7), 0.5, torch.device("cpu"))
    assert torch.equal(a["context"], b["context"])
