"""Latent and text-conditioning caches: each image and caption is encoded once, on disk in the work dir.

Keys are content hashes, so a changed image, caption, bucket or base model misses the cache while
everything else is reused. The text cache holds the LLM adapter's OUTPUT (the DiT's cross-attention
context): the adapter is frozen, so training never runs Qwen3 or the adapter again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from anima_lora_flow.dataset.items import TrainItem

from .components import TextStack, build_text_stack, build_vae, component_identity, latent_stats, release_memory

log = logging.getLogger(__name__)

# Bump when the preprocessing changes meaning (resize rule, normalisation, prompt handling).
LATENT_VERSION = "latent-v1:mode:cover-center-crop:lanczos"
TEXT_VERSION = "text-v1:adapter-output"
TEXT_MODULES = ("tokenizer", "t5_tokenizer", "text_encoder", "text_conditioner")


@dataclass
class CacheStats:
    latents_encoded: int = 0
    latents_reused: int = 0
    texts_encoded: int = 0
    texts_reused: int = 0


@dataclass
class TrainingCache:
    """Per-item latents (16,1,h,w) and contexts (tokens, dim), plus the empty-caption context."""

    latents: list[torch.Tensor]
    contexts: list[torch.Tensor]
    empty_context: torch.Tensor
    context_length: int  # every batch's context is zero-padded to this many tokens
    stats: CacheStats = field(default_factory=CacheStats)


def load_image(path: Path, bucket: tuple[int, int]) -> torch.Tensor:
    """Pixels (3, H, W) in [-1, 1]: RGB with alpha flattened on white, resized to cover the bucket, center-cropped."""
    width, height = bucket

    def _to_8bit(img: Image.Image) -> Image.Image:
        """An 8-bit copy of a 16-bit or 32-bit grey image, scaled, since Pillow's convert() clips values above 255 to white.

        16-bit modes divide by 257 (65535 -> 255); mode I (how 16-bit files may open) scales by the range its values
        really use; mode F is taken as 0..1 when its values fit, else scaled like mode I.
        """
        if not (img.mode.startswith("I") or img.mode == "F"):
            return img
        values = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16"):
            top = 65535.0
        else:
            high = float(values.max(initial=0.0))
            top = 1.0 if img.mode == "F" and high <= 1.0 else 255.0 if high <= 255 else 65535.0 if high <= 65535 else high
        scaled = np.clip(values * (255.0 / top), 0, 255)
        return Image.fromarray(np.rint(scaled).astype(np.uint8))  # uint8 2-D: mode L

    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        img = _to_8bit(img).convert("RGB")
        scale = max(width / img.width, height / img.height)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        img = img.crop((left, top, left + width, top + height))
        array = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


@torch.no_grad()
def encode_latent(vae: torch.nn.Module, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised latent (16, 1, H/8, W/8): mode of the posterior (deterministic, like kohya), (z - mean) / std."""
    x = pixels[None, :, None].to(vae.device, vae.dtype)  # (1, 3, T=1, H, W)
    z = vae.encode(x).latent_dist.mode().float()
    return ((z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1))[0].cpu()


@torch.no_grad()
def encode_caption(text: TextStack, caption: str) -> torch.Tensor:
    """The adapter's output for one caption, trimmed to its T5 tokens (the rest is zeros anyway).

    Same steps as diffusers' Anima encoder blocks: Qwen3 last_hidden_state masked, T5 ids with </s>,
    an empty Qwen prompt becomes one masked token.
    """
    device = text.text_encoder.device
    qwen = text.tokenizer([caption], truncation=True, max_length=text.max_length, return_tensors="pt")
    ids, mask = qwen.input_ids.to(device), qwen.attention_mask.to(device)
    if ids.shape[-1] == 0:
        ids, mask = ids.new_zeros((1, 1)), mask.new_zeros((1, 1))
    hidden = text.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden * mask.to(hidden).unsqueeze(-1)
    t5 = text.t5_tokenizer([caption], truncation=True, max_length=text.max_length, return_tensors="pt")
    context = text.text_conditioner(
        source_hidden_states=hidden.to(text.text_conditioner.dtype),
        target_input_ids=t5.input_ids.to(device),
        target_attention_mask=t5.attention_mask.to(device),
        source_attention_mask=mask,
    )
    return context[0, : t5.input_ids.shape[-1]].float().cpu()


def latent_key(item: TrainItem, vae_id: str) -> str:
    h = hashlib.sha256(Path(item.image_path).read_bytes()).hexdigest()
    return _hash(LATENT_VERSION, vae_id, h, f"{item.bucket[0]}x{item.bucket[1]}")


def text_key(caption: str, text_id: str) -> str:
    return _hash(TEXT_VERSION, text_id, caption)


def build_cache(
    items: Sequence[TrainItem], models_dir: Path, work_dir: Path, device: torch.device, dtype: torch.dtype
) -> TrainingCache:
    """Load every item's latent and context from the cache, encoding (and storing) only the missing ones.

    The VAE and the text stack are loaded only if something is missing and freed before returning.
    """
    root = Path(work_dir) / "cache"
    stats = CacheStats()
    vae_id = component_identity(models_dir, "vae")
    text_id = component_identity(models_dir, *TEXT_MODULES)

    latent_paths = [root / "latents" / f"{latent_key(item, vae_id)}.safetensors" for item in items]
    missing = [i for i, path in enumerate(latent_paths) if not path.is_file()]
    if missing:
        vae = build_vae(models_dir, device, dtype)
        mean, std = (torch.tensor(v, device=device) for v in latent_stats(models_dir))
        for i in missing:
            latent = encode_latent(vae, load_image(items[i].image_path, items[i].bucket), mean, std)
            _save_tensor(latent_paths[i], latent)
        del vae
        release_memory()
    stats.latents_encoded, stats.latents_reused = len(missing), len(items) - len(missing)

    captions = ["", *dict.fromkeys(item.caption for item in items)]
    text_paths = {c: root / "text" / f"{text_key(c, text_id)}.safetensors" for c in captions}
    missing_text = [c for c, path in text_paths.items() if not path.is_file()]
    if missing_text:
        text = build_text_stack(models_dir, device, dtype)
        for caption in missing_text:
            _save_tensor(text_paths[caption], encode_caption(text, caption))
        context_length = text.max_length
        text.free()
    else:
        context_length = _conditioner_length(models_dir)
    stats.texts_encoded, stats.texts_reused = len(missing_text), len(captions) - len(missing_text)
    log.debug("caches: %s", stats)

    contexts = {c: _load_tensor(path) for c, path in text_paths.items()}
    return TrainingCache(
        latents=[_load_tensor(p) for p in latent_paths],
        contexts=[contexts[item.caption] for item in items],
        empty_context=contexts[""],
        context_length=context_length,
        stats=stats,
    )


def _conditioner_length(models_dir: Path) -> int:
    return int(json.loads((Path(models_dir) / "text_conditioner" / "config.json").read_text())["min_sequence_length"])


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _save_tensor(path: Path, tensor: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"x": tensor.contiguous()}, str(tmp))
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated entry that would be trusted


def _load_tensor(path: Path) -> torch.Tensor:
    return load_file(str(path))["x"]
