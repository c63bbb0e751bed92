"""Cache entries with NaN/inf (an old fp16 encode) are encoded again in fp32, or the image is refused by name."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.cache import build_cache


def _cache(items, models, work):
    return build_cache(items, models, work, torch.device("cpu"), torch.float32)


def _poison(path, value=float("nan")):
    """Overwrite a real cache file with the same tensor holding one non-finite number, as an fp16 overflow leaves it."""
    tensor = load_file(str(path))["x"].clone()
    tensor.view(-1)[0] = value
    save_file({"x": tensor}, str(path))


def test_a_poisoned_latent_and_context_are_encoded_again(items, tiny_model, tmp_path):
    work = tmp_path / "work"
    first = _cache(items, tiny_model, work)
    latent_files = sorted((work / "cache" / "latents").iterdir())
    text_files = sorted((work / "cache" / "text").iterdir())
    poisoned_latent = next(p for p in latent_files if torch.equal(load_file(str(p))["x"], first.latents[1]))
    poisoned_text = next(p for p in text_files if torch.equal(load_file(str(p))["x"], first.contexts[0]))
    _poison(poisoned_latent)
    _poison(poisoned_text, float("inf"))

    second = _cache(items, tiny_model, work)
    st = second.stats
    assert (st.latents_repaired, st.latents_reused, st.latents_encoded) == (1, 2, 0)
    assert (st.texts_repaired, st.texts_reused, st.texts_encoded) == (1, 3, 0)
    assert torch.equal(second.latents[1], first.latents[1]) and torch.equal(second.contexts[0], first.contexts[0])
    assert torch.isfinite(load_file(str(poisoned_latent))["x"]).all()  # the file itself was replaced
    assert torch.isfinite(load_file(str(poisoned_text))["x"]).all()

    third = _cache(items, tiny_model, work)
    assert (third.stats.latents_repaired, third.stats.texts_repaired) == (0, 0)


def _vae_that_overflows(tiny_model, dest):
    """The tiny model with its VAE's weights scaled past fp32's range: every latent comes out NaN/inf.

    Weight files keep their size, so the cache keys (config + file sizes) stay those of the tiny model.
    """
    shutil.copytree(tiny_model, dest)
    weights = next((dest / "vae").glob("*.safetensors"))
    tensors = {k: (v * 1e38 if v.is_floating_point() and v.dim() > 1 else v) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    return dest


def test_an_image_that_stays_nan_in_fp32_is_refused_by_name(items, tiny_model, tmp_path):
    broken = _vae_that_overflows(tiny_model, tmp_path / "overflowing")
    with pytest.raises(UserInputError, match=rf"{items[0].image_path} encodes to NaN/inf latents even in fp32"):
        _cache(items, broken, tmp_path / "fresh-work")
    assert not list((tmp_path / "fresh-work" / "cache" / "latents").glob("*.safetensors"))  # nothing poisoned kept

    work = tmp_path / "work"
    _cache(items, tiny_model, work)
    _poison(sorted((work / "cache" / "latents").iterdir())[0])
    with pytest.raises(UserInputError, match="encodes to NaN/inf latents even in fp32"):
        _cache(items, broken, work)  # the cached entry is bad and so is its fp32 re-encode
