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
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..core.buckets import cover_size
from ..core.caption_tokens import cut_reason, load_caption_tokenizers
from ..core.orientation import upright
from ..core.train_items import TrainItem
from ..errors import UserInputError, setting

from .components import TextStack, build_text_stack, build_vae, component_identity, latent_stats, release_memory

log = logging.getLogger(__name__)

# Bump when the preprocessing changes meaning (resize rule, normalisation, prompt handling).
LATENT_VERSION = "latent-v2:mode:exif-upright:cover-center-crop:lanczos"
TEXT_VERSION = "text-v1:adapter-output"
TEXT_MODULES = ("tokenizer", "t5_tokenizer", "text_encoder", "text_conditioner")


@dataclass
class CacheStats:
    latents_encoded: int = 0
    latents_reused: int = 0
    texts_encoded: int = 0
    texts_reused: int = 0
    latents_repaired: int = 0  # cached or fresh entries with NaN/inf, encoded again in fp32
    texts_repaired: int = 0


@dataclass
class TrainingCache:
    """Per-item latents (16,1,h,w) and contexts (tokens, dim), plus the empty-caption context."""

    latents: list[torch.Tensor]
    contexts: list[torch.Tensor]
    empty_context: torch.Tensor
    context_length: int  # every batch's context is zero-padded to this many tokens
    stats: CacheStats = field(default_factory=CacheStats)
    texts: dict[str, torch.Tensor] = field(default_factory=dict)  # the extra_texts' contexts (sample prompts)


def load_image(path: Path, bucket: tuple[int, int]) -> torch.Tensor:
    """Pixels (3, H, W) in [-1, 1]: turned upright by its EXIF orientation (as the validator bucketed it), RGB with
    alpha flattened on white, resized to cover the bucket, center-cropped.
    """
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
        img = upright(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        img = _to_8bit(img).convert("RGB")
        _, size = cover_size(img.width, img.height, bucket)
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
    items: Sequence[TrainItem], models_dir: Path, work_dir: Path, device: torch.device, dtype: torch.dtype,
    extra_texts: Sequence[str] = (),
) -> TrainingCache:
    """Load every item's latent and context from the cache, encoding (and storing) only the missing ones.

    `extra_texts` (the sample prompts) are encoded with the captions, while the text stack is loaded
    anyway, and kept in the same cache: sampling later needs no text encoder.

    The VAE and the text stack are loaded only if something is missing and freed before returning.
    Every entry is checked for NaN/inf as it is loaded or made: one would poison every step that draws
    it. Such an entry is encoded again once in fp32 (an old fp16 encode overflows; fp32 does not);
    if that is still not finite the image or caption is refused, by name.

    Raises:
        UserInputError: an image or caption that does not encode to finite numbers even in fp32.
    """
    warn_cut_captions(items, models_dir)
    root = Path(work_dir) / "cache"
    stats = CacheStats()
    vae_id = component_identity(models_dir, "vae")
    text_id = component_identity(models_dir, *TEXT_MODULES)

    @contextmanager
    def vae_encoder(run_dtype: torch.dtype):
        vae = build_vae(models_dir, device, run_dtype)
        mean, std = (torch.tensor(v, device=device) for v in latent_stats(models_dir))
        try:
            yield lambda i: encode_latent(vae, load_image(items[i].image_path, items[i].bucket), mean, std)
        finally:
            del vae
            release_memory()

    def bad_image(i: int) -> UserInputError:
        return UserInputError(
            f"{items[i].image_path} encodes to NaN/inf latents even in fp32, so it cannot be trained; "
            "re-save it as an 8-bit RGB PNG or JPEG, or remove it from the dataset"
        )

    latent_paths = [root / "latents" / f"{latent_key(item, vae_id)}.safetensors" for item in items]
    latents, (stats.latents_encoded, stats.latents_reused, stats.latents_repaired) = _load_or_encode(
        latent_paths, dtype, vae_encoder, bad_image, [str(item.image_path) for item in items]
    )

    captions = ["", *dict.fromkeys([*(item.caption for item in items), *extra_texts])]

    @contextmanager
    def text_encoder(run_dtype: torch.dtype):
        text = build_text_stack(models_dir, device, run_dtype)
        try:
            yield lambda i: encode_caption(text, captions[i])
        finally:
            text.free()

    def bad_caption(i: int) -> UserInputError:
        if not captions[i]:
            return UserInputError(
                "the empty caption (used for caption dropout) encodes to NaN/inf even in fp32: the text encoder "
                "files look damaged; run `anima-lora models verify`"
            )
        images = [str(item.image_path) for item in items if item.caption == captions[i]]
        if not images:
            return UserInputError(f"the sample prompt {captions[i][:80]!r} encodes to NaN/inf even in fp32; edit it in "
                                  f"{setting('sample_prompts')}", field="sample_prompts")
        return UserInputError(
            f"the caption of {images[0]}{f' (and {len(images) - 1} more)' if len(images) > 1 else ''} "
            f"encodes to NaN/inf even in fp32: {captions[i][:80]!r}; edit that caption or remove the image"
        )

    text_paths = [root / "text" / f"{text_key(c, text_id)}.safetensors" for c in captions]
    texts, (stats.texts_encoded, stats.texts_reused, stats.texts_repaired) = _load_or_encode(
        text_paths, dtype, text_encoder, bad_caption, [f"caption {c[:40]!r}" for c in captions]
    )
    log.debug("caches: %s", stats)

    contexts = dict(zip(captions, texts))
    return TrainingCache(
        latents=latents,
        contexts=[contexts[item.caption] for item in items],
        empty_context=contexts[""],
        context_length=_conditioner_length(models_dir),
        stats=stats,
        texts={text: contexts[text] for text in extra_texts},
    )


# The share of the free device memory (measured after the model is on it) the cache may take. The rest is
# for the step's activations, which the planner sizes: 100 images at 768 px are about 160 MB, 2 % of a T4's
# 8 GB left after fp16 weights, so a usual dataset fits everywhere and only a very large one stays on the host.
DEVICE_CACHE_SHARE = 0.1

Placement = Literal["device", "pinned", "host"]


def cache_bytes(cache: TrainingCache) -> int:
    """Bytes the latents and contexts (trimmed, as cached) take, wherever they are; a context that several
    images share (the same caption) counts once."""
    tensors = {id(t): t for t in [*cache.latents, *cache.contexts, cache.empty_context]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def cache_placement(nbytes: int, device_type: str, free_bytes: int | None, share: float = DEVICE_CACHE_SHARE) -> Placement:
    """Where the cache lives during training: on the CUDA device when it takes at most `share` of its free
    memory (copied once, so a step moves nothing), else in pinned host memory (asynchronous copies);
    on a machine without CUDA it stays where it is (the host is the device)."""
    if device_type != "cuda":
        return "host"
    if free_bytes is not None and nbytes <= share * free_bytes:
        return "device"
    return "pinned"


def place_cache(cache: TrainingCache, device: torch.device) -> Placement:
    """Move the cache's tensors once to where cache_placement says (in place); returns the placement."""
    device = torch.device(device)
    nbytes = cache_bytes(cache)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    where = cache_placement(nbytes, device.type, free)
    move = {"device": lambda t: t.to(device), "pinned": lambda t: t.pin_memory(), "host": lambda t: t}[where]
    moved: dict[int, torch.Tensor] = {}  # by identity: images with the same caption share one context

    def once(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in moved:
            moved[id(tensor)] = move(tensor)
        return moved[id(tensor)]

    try:
        for tensors in (cache.latents, cache.contexts):
            for i, tensor in enumerate(tensors):  # one at a time: each host copy is freed as its moved one is made
                tensors[i] = once(tensor)
        cache.empty_context = once(cache.empty_context)
    except RuntimeError as exc:  # the driver refused to lock that much host memory: pageable copies still work
        if where != "pinned":
            raise
        log.warning("training cache: pinning %.1f MB of host memory failed (%s); it stays in pageable memory",
                    nbytes / 1e6, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)  # fmt: skip
        where = "host"
    log.info("training cache: %.1f MB of latents and contexts %s", nbytes / 1e6,
             {"device": f"on {device}", "pinned": "in pinned host memory", "host": "in host memory"}[where])  # fmt: skip
    return where


def warn_cut_captions(items: Sequence[TrainItem], models_dir: Path) -> list[str]:
    """Log one warning per caption longer than the text window, naming its images and the tokens lost; return them.

    Counted with the model's own tokenizers and window, exactly as encode_caption truncates, on every
    run (cached contexts included): the loss is announced each time it happens, never silently.
    """
    tokenizers = load_caption_tokenizers(models_dir)
    images: dict[str, list[str]] = {}
    for item in items:
        images.setdefault(item.caption, []).append(str(item.image_path))
    lines = []
    for caption, names in images.items():
        qwen, t5, cut = tokenizers.cut(caption)
        if cut:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"{shown}: {cut_reason(qwen, t5, cut, tokenizers.window)}")
            log.warning("%s", lines[-1])
    return lines


def _load_or_encode(
    paths: list[Path],
    dtype: torch.dtype,
    encoder: Callable[[torch.dtype], AbstractContextManager[Callable[[int], torch.Tensor]]],
    refuse: Callable[[int], Exception],
    names: list[str],
) -> tuple[list[torch.Tensor], tuple[int, int, int]]:
    """Each path's tensor, loaded when cached and finite, else encoded; (tensors, (encoded, reused, repaired))."""
    tensors: list[torch.Tensor | None] = [None] * len(paths)
    again = []  # encoded in fp32, once
    for i, path in enumerate(paths):
        if path.is_file():
            tensor = _load_tensor(path)
            if _finite(tensor):
                tensors[i] = tensor
                continue
            log.warning("%s: its cached entry %s holds NaN/inf; encoding it again in fp32", names[i], path)
            again.append(i)
    missing = [i for i, tensor in enumerate(tensors) if tensor is None and i not in again]
    reused = len(paths) - len(missing) - len(again)
    if missing:
        with encoder(dtype) as encode:
            for i in missing:
                tensor = encode(i)
                if _finite(tensor):
                    _save_tensor(paths[i], tensor)
                    tensors[i] = tensor
                elif dtype == torch.float32:
                    raise refuse(i)  # fp32 again would give the same numbers
                else:
                    log.warning("%s: encoding in %s gave NaN/inf; encoding it again in fp32", names[i], dtype)
                    again.append(i)
    if again:
        with encoder(torch.float32) as encode:
            for i in again:
                tensor = encode(i)
                if not _finite(tensor):
                    raise refuse(i)
                _save_tensor(paths[i], tensor)  # replaces the poisoned entry for every later run
                tensors[i] = tensor
    return tensors, (len(missing), reused, len(again))  # type: ignore[return-value]


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


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
