"""Buckets over 2048 px: diffusers' Cosmos RoPE covers 128 patches per side, the trainer enlarges it to 256."""

from __future__ import annotations

import math

import pytest
import torch

from anima_lora_flow.core.buckets import make_buckets
from anima_lora_flow.trainer.components import build_transformer, enlarge_rope
from anima_lora_flow.trainer.loss import Objective, compute_loss


def _load_unchanged(tiny_model):
    from diffusers import CosmosTransformer3DModel

    return CosmosTransformer3DModel.from_pretrained(tiny_model / "transformer", torch_dtype=torch.float32).eval()


def test_a_larger_table_changes_nothing_at_sizes_the_old_one_covered(tiny_model, tiny_inputs):
    model = _load_unchanged(tiny_model)
    inputs = tiny_inputs()
    with torch.no_grad():
        before = model(**inputs)[0]
        cos_before, sin_before = model.rope(inputs["hidden_states"])
        enlarge_rope(model, 256)
        after = model(**inputs)[0]
        cos_after, sin_after = model.rope(inputs["hidden_states"])
    assert model.rope.max_size[1:] == [256, 256]
    assert torch.equal(cos_before, cos_after) and torch.equal(sin_before, sin_after)
    assert torch.equal(before, after)


def test_the_unchanged_table_fails_past_2048_px(tiny_model):
    model = _load_unchanged(tiny_model)
    latents = torch.zeros(1, 16, 1, 4096 // 8, 256 // 8)  # 256 patches on the long side
    with pytest.raises(RuntimeError, match="128"):
        model.rope(latents)


@pytest.mark.parametrize("resolution", [512, 768, 1024, 1536, 2048])
def test_loss_runs_at_the_largest_bucket_of_each_resolution(tiny_model, resolution):
    model = build_transformer(tiny_model, torch.float32, gradient_checkpointing=False)
    width, height = max(make_buckets(resolution), key=max)  # the validator's defaults: sides up to 4096
    assert max(width, height) == min(4096, resolution * resolution // 256)
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(1, 16, 1, height // 8, width // 8, generator=g), "context": torch.randn(1, 16, 32, generator=g)}
    with torch.no_grad():
        loss = compute_loss(model, batch, Objective(), torch.Generator().manual_seed(1))
    assert math.isfinite(loss.item())
