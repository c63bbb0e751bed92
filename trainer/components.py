"""Loading the Anima components from a Diffusers-format folder, one build_* function per component.

The text stack and the VAE are only loaded when a cache entry is missing, and freed after caching;
training itself needs only the transformer.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError, render, setting

SUBFOLDERS = ("transformer", "text_conditioner", "text_encoder", "tokenizer", "t5_tokenizer", "vae", "scheduler")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_models_dir(models_dir: Path) -> Path:
    """Raise FileNotFoundError naming the missing subfolders of a Diffusers-format Anima folder."""
    models_dir = Path(models_dir)
    missing = [name for name in SUBFOLDERS if not (models_dir / name).is_dir()]
    if missing:
        raise FileNotFoundError(render(
            f"{models_dir} is not a Diffusers-format Anima folder: missing {', '.join(missing)} "
            f"(pass {setting('models_dir')} a Diffusers-format Anima folder, or leave it out to download one)"
        ))
    return models_dir


def component_identity(models_dir: Path, *names: str) -> str:
    """A short hash naming the weights of some components: their configs plus weight file names and sizes.

    Part of every cache key, so swapping the base model invalidates the caches. Sizes instead of
    content hashes: hashing gigabytes of weights at every start would cost more than re-caching.
    """
    h = hashlib.sha256()
    for name in names:
        folder = Path(models_dir) / name
        for path in sorted(folder.rglob("*")):
            if path.suffix == ".json" or path.name.endswith(".model"):
                h.update(f"{path.relative_to(models_dir)}\n".encode())
                h.update(path.read_bytes())
            elif path.suffix in _WEIGHT_SUFFIXES:
                h.update(f"{path.relative_to(models_dir)}:{path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


# RoPE positions per side: sd-scripts' table, enough for the validator's largest bucket side at the
# default max_bucket_reso 4096 (4096 px / 8 (VAE) / 2 (patch) = 256).
ROPE_PATCHES = 256


def build_transformer(models_dir: Path, dtype: torch.dtype, gradient_checkpointing: bool,
                      rope_patches: int = ROPE_PATCHES) -> torch.nn.Module:
    """The frozen Cosmos DiT (CosmosTransformer3DModel) in `dtype`, prepared by prepare_frozen_transformer,
    with a RoPE table of at least ROPE_PATCHES, or `rope_patches` (effective.Effective.rope_patches: the
    largest bucket of a larger max_bucket_reso), positions per side."""
    from diffusers import CosmosTransformer3DModel

    model = CosmosTransformer3DModel.from_pretrained(Path(models_dir) / "transformer", torch_dtype=dtype)
    enlarge_rope(model, max(ROPE_PATCHES, rope_patches))
    return prepare_frozen_transformer(model, dtype, gradient_checkpointing)


def enlarge_rope(model: torch.nn.Module, patches: int) -> torch.nn.Module:
    """Let diffusers' Cosmos RoPE cover `patches` positions per side (it covers 128: 2048 px for Anima).

    CosmosRotaryPosEmbed builds its positions as arange(max(max_size)) and slices the first h and w;
    a bucket side over 2048 px needs more ("Expected size 132 but got size 128"). The frequencies
    depend only on the head dimension and rope_scale, never on max_size, so a longer range leaves
    every smaller size's numbers exactly as they were. The saved config is not touched.
    """
    rope = model.rope
    frames, height, width = rope.max_size
    rope.max_size = [frames, max(height, patches), max(width, patches)]
    return model


def prepare_frozen_transformer(model: torch.nn.Module, dtype: torch.dtype, gradient_checkpointing: bool) -> torch.nn.Module:
    """Freeze, gradient checkpointing if asked, and fp16's fp32 islands when the weights are fp16.

    fp16 weights are used only under fp16 autocast (loop.weight_dtype), which the islands need.
    """
    model.requires_grad_(False)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if dtype == torch.float16:
        from .fp16 import protect_fp16

        protect_fp16(model)
    return model


def speed_up_transformer(model: torch.nn.Module, *, attention_backend: str = "native", compile_blocks: bool = False,
                         compile_backend: str = "inductor") -> torch.nn.Module:
    """Pick the attention kernel and compile each block on its own (regional compilation).

    Compiling block by block compiles one graph reused 28 times instead of the whole model, and
    keeps parameter names (and so the LoRA and state files) unchanged.

    Raises:
        UserInputError: the attention backend is unknown or its package is not installed.
    """
    if attention_backend != "native":
        try:
            model.set_attention_backend(attention_backend)
        except (ValueError, ImportError, RuntimeError) as exc:
            raise UserInputError(f"{setting('attention_backend', attention_backend)}: {exc}; use native",
                                 field="attention_backend") from exc
    if compile_blocks:
        for block in model.transformer_blocks:
            block.compile(backend=compile_backend)
    return model


@dataclass
class TextStack:
    """Everything that turns a caption into the DiT's cross-attention context (all frozen)."""

    tokenizer: Any
    t5_tokenizer: Any
    text_encoder: torch.nn.Module
    text_conditioner: torch.nn.Module

    @property
    def max_length(self) -> int:
        # The conditioner pads its output to min_sequence_length (512 for Anima); truncating the
        # prompts there too keeps every context exactly that long, as inference sees it.
        return int(self.text_conditioner.config.min_sequence_length)

    def free(self) -> None:
        del self.text_encoder, self.text_conditioner
        release_memory()


def build_text_stack(models_dir: Path, device: torch.device, dtype: torch.dtype) -> TextStack:
    """Qwen3 encoder + both tokenizers + the LLM adapter (AnimaTextConditioner), on `device`, in eval mode."""
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner
    from transformers import AutoTokenizer, Qwen3Model

    models_dir = Path(models_dir)
    encoder = Qwen3Model.from_pretrained(models_dir / "text_encoder", dtype=dtype).to(device).eval()
    conditioner = AnimaTextConditioner.from_pretrained(models_dir / "text_conditioner", torch_dtype=dtype).to(device).eval()
    return TextStack(
        tokenizer=AutoTokenizer.from_pretrained(models_dir / "tokenizer"),
        t5_tokenizer=AutoTokenizer.from_pretrained(models_dir / "t5_tokenizer"),
        text_encoder=encoder.requires_grad_(False),
        text_conditioner=conditioner.requires_grad_(False),
    )


def build_vae(models_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The Qwen-Image VAE (AutoencoderKLQwenImage), frozen, on `device`."""
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage.from_pretrained(Path(models_dir) / "vae", torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)


def latent_stats(models_dir: Path) -> tuple[list[float], list[float]]:
    """The VAE's per-channel latents_mean / latents_std, read from its config (no weights loaded)."""
    config = json.loads((Path(models_dir) / "vae" / "config.json").read_text())
    return list(config["latents_mean"]), list(config["latents_std"])


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # glibc keeps freed weights in its heap (2 GiB after caching the real encoders); malloc_trim returns them
    getattr(ctypes.CDLL(None) if sys.platform == "linux" else None, "malloc_trim", lambda _: 0)(0)
