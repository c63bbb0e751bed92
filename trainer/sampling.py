"""Sample images while training: the training transformer with its adapter in place, through diffusers' Anima pipeline.

The prompts' contexts come from the cache (encoded with the captions, trainer/cache.py), so sampling
loads only the VAE, to decode, and frees it after. The base model's row is the same prompts with the
adapter switched off: it never changes during a run, so it is made once, kept in the work dir's cache
(and, through the Samples event, in the run store) and reused by every later sampling point and session.

Sampling never costs the training: any failure is logged and reported as a Samples event with its
reason, and the loop goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

from ..core.formatting import epoch_position
from ..core.sample_prompts import SamplePrompt

from .cache import TEXT_MODULES
from .components import build_vae, component_identity, release_memory
from .events import Samples, emit
from .sample_grid import sample_grid
from .sample_plan import BASE_SAMPLES_DIR

if TYPE_CHECKING:
    from .loop import Session

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"  # in the output dir and in the run store
# Bump when the way images are made changes (pipeline blocks, padding, seeding): the cached base row is remade.
SAMPLER_VERSION = "sampler-v1:anima-modular:padded-context:seed-per-prompt"


@dataclass
class Sampling:
    """What the loop's sampling points need: the resolved prompts, their contexts, where the base row lives."""

    prompts: list[SamplePrompt]
    contexts: list[torch.Tensor]  # (tokens, dim) per prompt, as cached
    negatives: list[torch.Tensor]
    context_length: int
    models_dir: Path
    base_dir: Path  # <work dir>/cache/samples/base, the run store's samples/base mirrored (runner/train.py)
    base_key: str  # names this run's base row there: <key>-<i>.png
    every_n_epochs: int
    vae_dtype: torch.dtype = torch.float32
    last_step: int | None = None  # an epoch's end followed by the run's end (or a stop) samples once

    @property
    def base_paths(self) -> list[Path]:
        return [self.base_dir / f"{self.base_key}-{i:02d}.png" for i in range(len(self.prompts))]


def prompt_texts(prompts: Sequence[SamplePrompt]) -> list[str]:
    """Every text the sampler needs encoded: each prompt and its negative prompt."""
    return list(dict.fromkeys(t for p in prompts for t in (p.prompt, p.negative_prompt)))


def build_sampling(prompts: list[SamplePrompt], cache, models_dir: Path, work_dir: Path, every_n_epochs: int,
                   weight_dtype: torch.dtype, vae_dtype: torch.dtype) -> Sampling:
    """The run's Sampling from prompts already resolved (sample_plan.sample_prompts_for) and encoded into `cache`."""
    key = base_key(prompts, models_dir, weight_dtype)
    return Sampling(
        prompts=prompts, contexts=[cache.texts[p.prompt] for p in prompts],
        negatives=[cache.texts[p.negative_prompt] for p in prompts], context_length=cache.context_length,
        models_dir=Path(models_dir), base_dir=Path(work_dir) / BASE_SAMPLES_DIR, base_key=key, every_n_epochs=every_n_epochs,
        vae_dtype=vae_dtype,
    )  # fmt: skip


def base_key(prompts: Sequence[SamplePrompt], models_dir: Path, weight_dtype: torch.dtype) -> str:
    """Names the base row: the base weights, the text stack, the precision and every prompt option decide its pixels."""
    parts = [SAMPLER_VERSION, component_identity(models_dir, "transformer", "vae", "scheduler"),
             component_identity(models_dir, *TEXT_MODULES), str(weight_dtype)]  # fmt: skip
    parts += [repr(sorted(asdict(p).items())) for p in prompts]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def grid_path(output_dir: Path, project: str, step: int) -> Path:
    return Path(output_dir) / SAMPLES_DIR / f"{project}-step{step:08d}.png"


def at_epoch_end(s: Session) -> None:
    """Sample after every N-th epoch but the last (the run's end samples that one, after its LoRA is saved)."""
    sampling, epoch = s.sampling, s.progress.epoch
    if sampling is not None and sampling.every_n_epochs and epoch % sampling.every_n_epochs == 0 and (
        epoch < s.cfg.max_train_epochs
    ):
        sample_now(s)


def sample_now(s: Session) -> Path | None:
    """Make this step's grid (once per step) and report it; never raises. The grid's path, or None."""
    sampling, p, acc = s.sampling, s.progress, s.accelerator
    if sampling is None or sampling.last_step == p.global_step:
        return None
    sampling.last_step = p.global_step
    path = None
    if acc.is_main_process:  # one grid per run: the other processes wait at the barrier below
        started = time.monotonic()
        try:
            path, base = make_grid(s)  # base: the base row's files when this point made them
        except Exception as exc:  # noqa: BLE001 - whatever breaks sampling (OOM included) must not end training
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("sampling at step %d failed, training goes on: %s", p.global_step, reason, exc_info=True)
            emit(s.sink, Samples(step=p.global_step, epoch=p.epoch, prompts=[q.prompt for q in sampling.prompts],
                                 error=reason))  # fmt: skip
        else:
            log.info("sample grid at step %d: %s (%.1f s)", p.global_step, path, time.monotonic() - started)
            emit(s.sink, Samples(path=str(path), step=p.global_step, epoch=p.epoch,
                                 prompts=[q.prompt for q in sampling.prompts], base=[str(b) for b in base]))  # fmt: skip
    acc.wait_for_everyone()
    return path


def make_grid(s: Session) -> tuple[Path, list[Path]]:
    """Sample the LoRA row (and the base row when it is not cached yet), write the grid; (grid, base files made now)."""
    sampling, p, cfg = s.sampling, s.progress, s.cfg
    model = s.accelerator.unwrap_model(s.model)
    with _vae(sampling, s.accelerator.device) as vae, _inference(model):
        base_paths, made = sampling.base_paths, []
        if not all(path.is_file() for path in base_paths):
            model.disable_adapters()
            try:
                base = generate(model, vae, sampling, s.accelerator)
            finally:
                model.enable_adapters()
            for image, path in zip(base, base_paths, strict=True):
                _save_png(image, path)
            made = base_paths
            log.info("base model samples made once for this run: %s", ", ".join(map(str, made)))
        lora = generate(model, vae, sampling, s.accelerator)
    base = [_open(path) for path in base_paths]
    title = f"{cfg.project_name}: step {p.global_step} of {p.total_steps}, " + epoch_position(
        p.epoch, p.step_in_epoch, cfg.max_train_epochs)
    grid = sample_grid(base, lora, [q.prompt for q in sampling.prompts], title)
    path = grid_path(s.output_dir, cfg.project_name, p.global_step)
    _save_png(grid, path)
    return path, made


def generate(transformer: torch.nn.Module, vae: torch.nn.Module, sampling: Sampling, accelerator) -> list[Image.Image]:
    """One image per prompt at its own size, steps, guidance and seed, through diffusers' Anima blocks.

    The pipeline starts at the prompt embeddings (the cached text conditioner output), so the text
    encoder blocks are left out; the rest is diffusers' own: latents, timesteps, the guided denoise
    loop, the VAE decode and the post-processing.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.guiders import ClassifierFreeGuidance

    device = accelerator.device
    pipe = _blocks().init_pipeline()
    pipe.set_progress_bar_config(disable=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(sampling.models_dir / "scheduler")
    images = []
    for prompt, context, negative in zip(sampling.prompts, sampling.contexts, sampling.negatives, strict=True):
        shifted = scheduler if prompt.flow_shift is None else FlowMatchEulerDiscreteScheduler.from_config(
            scheduler.config, shift=prompt.flow_shift)
        pipe.update_components(transformer=transformer, vae=vae, scheduler=shifted,
                               guider=ClassifierFreeGuidance(guidance_scale=prompt.guidance))  # fmt: skip
        generator = torch.Generator(device=device).manual_seed(prompt.seed)
        with accelerator.autocast():
            out = pipe(
                prompt_embeds=_padded(context, sampling.context_length, device),
                negative_prompt_embeds=_padded(negative, sampling.context_length, device),
                height=prompt.height, width=prompt.width, num_inference_steps=prompt.steps, generator=generator,
                output="images",
            )  # fmt: skip
        images.append(out[0])
    return images


def _blocks():
    """diffusers' Anima text-to-image blocks without the two that need the text stack."""
    from diffusers.modular_pipelines import SequentialPipelineBlocks
    from diffusers.modular_pipelines.anima.before_denoise import (
        AnimaPrepareLatentsStep,
        AnimaSetTimestepsStep,
        AnimaTextInputStep,
    )
    from diffusers.modular_pipelines.anima.decoders import AnimaProcessImagesOutputStep, AnimaVaeDecoderStep
    from diffusers.modular_pipelines.anima.denoise import AnimaDenoiseStep

    class AnimaFromEmbeddingsBlocks(SequentialPipelineBlocks):
        model_name = "anima"
        block_classes = [AnimaTextInputStep, AnimaPrepareLatentsStep, AnimaSetTimestepsStep, AnimaDenoiseStep,
                         AnimaVaeDecoderStep, AnimaProcessImagesOutputStep]  # fmt: skip
        block_names = ["input", "prepare_latents", "set_timesteps", "denoise", "decode", "postprocess"]

    return AnimaFromEmbeddingsBlocks()


def _padded(context: torch.Tensor, length: int, device: torch.device) -> torch.Tensor:
    """(1, length, dim): zero rows after the prompt, as the training batches and the Anima conditioner pad it."""
    return F.pad(context, (0, 0, 0, max(0, length - context.shape[0])))[None].to(device)


@contextmanager
def _vae(sampling: Sampling, device: torch.device):
    """The VAE, only while sampling: the training step never needs it."""
    vae = build_vae(sampling.models_dir, device, sampling.vae_dtype)
    try:
        yield vae
    finally:
        del vae
        release_memory()


@contextmanager
def _inference(model: torch.nn.Module):
    """Eval mode without gradients; training mode restored whatever happens."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)  # a reader (the sync, a later session) never sees half a PNG


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()
