"""Caches: reused on a second run, invalidated by a changed caption, image or bucket; image preprocessing."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from anima_lora_flow.trainer.cache import build_cache, load_image


def _cache(items, tiny_model, work):
    return build_cache(items, tiny_model, work, torch.device("cpu"), torch.float32)


def test_second_run_reuses_and_changes_invalidate(items, tiny_model, tmp_path):
    work = tmp_path / "work"
    first = _cache(items, tiny_model, work)
    assert (first.stats.latents_encoded, first.stats.texts_encoded) == (3, 4)  # 3 captions + the empty one
    assert first.latents[0].shape == (16, 1, 32, 32)
    assert first.contexts[0].shape[1] == 32 and first.context_length == 16
    assert first.empty_context.shape[0] == 1  # just </s>

    second = _cache(items, tiny_model, work)
    assert (second.stats.latents_reused, second.stats.texts_reused) == (3, 4)
    assert (second.stats.latents_encoded, second.stats.texts_encoded) == (0, 0)
    assert torch.equal(first.latents[1], second.latents[1]) and torch.equal(first.contexts[2], second.contexts[2])

    changed = [dataclasses.replace(items[0], caption="1girl, red eyes"), *items[1:]]
    third = _cache(changed, tiny_model, work)
    assert (third.stats.latents_encoded, third.stats.texts_encoded) == (0, 1)
    assert not torch.equal(third.contexts[0][:1], first.contexts[0][:1]) or third.contexts[0].shape != first.contexts[0].shape

    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(items[2].image_path)  # new image bytes
    rebucketed = [*changed[:1], dataclasses.replace(items[1], bucket=(320, 192)), items[2]]
    fourth = _cache(rebucketed, tiny_model, work)
    assert (fourth.stats.latents_encoded, fourth.stats.latents_reused) == (2, 1)
    assert fourth.latents[1].shape == (16, 1, 24, 40)


def test_load_image_flattens_alpha_on_white_and_covers_bucket(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (300, 100), (0, 0, 0, 0)).save(path)
    pixels = load_image(path, (128, 64))
    assert pixels.shape == (3, 64, 128)
    assert torch.allclose(pixels, torch.ones_like(pixels))  # fully transparent -> white -> +1
    Image.new("RGB", (50, 200), (0, 0, 0)).save(tmp_path / "black.jpg")
    assert torch.allclose(load_image(tmp_path / "black.jpg", (64, 64)), -torch.ones(3, 64, 64))


def test_load_image_scales_16_bit_grey_instead_of_clipping_to_white(tmp_path):
    """A 16-bit PNG at 40000/65535 is mid-grey (40000/257 = 156), not the solid white Pillow's convert gives."""
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.full((80, 80), 40000, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file, as a scanner or HDR export writes it
    grey = (load_image(path, (64, 64)) + 1.0) * 127.5
    assert torch.allclose(grey, torch.full_like(grey, 156.0), atol=0.6)


def test_load_image_scales_every_deep_grey_mode(tmp_path):
    for mode in ("I;16", "I;16B", "I;16L"):  # TIFF keeps each byte order as written
        Image.new(mode, (64, 64), 65535).save(tmp_path / "white.tif")
        assert Image.open(tmp_path / "white.tif").mode.startswith("I;16")
        assert torch.allclose(load_image(tmp_path / "white.tif", (64, 64)), torch.ones(3, 64, 64))
    Image.new("I", (64, 64), 20000).save(tmp_path / "deep.tif")  # mode I holding 16-bit values
    grey = (load_image(tmp_path / "deep.tif", (64, 64)) + 1.0) * 127.5
    assert torch.allclose(grey, torch.full_like(grey, 78.0), atol=0.6)
    Image.new("I", (64, 64), 200).save(tmp_path / "shallow.tif")  # mode I holding 8-bit values stays as is
    grey = (load_image(tmp_path / "shallow.tif", (64, 64)) + 1.0) * 127.5
    assert torch.allclose(grey, torch.full_like(grey, 200.0), atol=0.6)
