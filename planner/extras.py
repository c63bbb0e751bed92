"""What sampling and the validation loss add to a run: time per session, and the VAE decoder's memory.

Validation (trainer/validation.py): at every epoch's end, each measured image at VALIDATION_SIGMAS noise
levels, one forward each without gradients. Sampling (trainer/sampling.py): every N-th epoch but the last,
at the run's end and at a session's stop, each prompt at its steps x 2 forwards (classifier-free
guidance: with and without the prompt) and one VAE decode; the base model's row once per run. The
prompt embeddings are computed with the captions at the start, so the VAE decoder is the only module
loaded for it (and freed after).

A forward is priced from the planned step: the table's seconds per step times the step model's
forward/step ratio on this GPU (core/step_model.py), so a GPU's table calibration carries over.
Everything here is estimated.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from ..config import TrainingConfig
from ..core.step_model import H100_PEAK_TFLOPS, forward_seconds, predict_peak_gib, step_seconds
from ..effective import Effective
from ..trainer.sample_plan import DATASET_PROMPTS, DEFAULT_GUIDANCE, DEFAULT_STEPS, check_sample_prompts

# trainer/validation.py's numbers (it imports torch, which `plan` does not load); a test keeps them equal.
VALIDATION_SIGMAS = 4
SAMPLES_PER_IMAGE, MIN_IMAGES, MAX_IMAGES = 25, 4, 16

VAE_LOAD_S = 3.0  # read the ~250 MB decoder and move it to the GPU, once per sampling point (estimated)
VAE_DECODE_S_768_H100 = 0.15  # one 768² decode on an H100 (estimated; scaled by tensor peak and pixels)
VAE_DECODER_GIB_768 = 3.0  # decoder weights + conv activations of one 768² decode, untiled (estimated)
INFERENCE_ACTIVATIONS_GIB_768 = 0.3  # a no-grad forward at batch 1 keeps one block's activations (estimated)


class ExtraWork(BaseModel):
    """Validation and sampling over the run, and what they cost; seconds are None without a step rate."""

    validation_images: int
    validation_forwards_per_epoch: int
    validation_s_per_epoch: float | None
    sampling_points: int  # grids over the run, the base row not counted
    sampling_forwards_per_point: int
    sampling_s_per_point: float | None  # one grid of the LoRA's row, with its VAE load and decodes
    base_row_s: float | None  # the base model's row, once per run (reused from the cache after)
    total_s: float | None
    share_of_training: float | None  # total_s / the training steps' time
    last_sampling_s: float  # what the session guard keeps for the sampling at a stop (0 when off)
    sampling_peak_gib: float | None  # the model, LoRA and optimizer state, a forward and the VAE decoder
    vae_decoder_gib: float | None
    status: str = "estimated"

    def describe(self) -> str:
        parts = [f"validation {self.validation_images} images x {VALIDATION_SIGMAS} noise levels each epoch"]
        if self.validation_s_per_epoch is not None:
            parts[0] += f" (~{self.validation_s_per_epoch:.0f} s)"
        if self.sampling_points:
            text = f"sampling {self.sampling_points} grids x {self.sampling_forwards_per_point} forwards + the base row once"
            if self.sampling_s_per_point is not None:
                text += f" (~{self.sampling_s_per_point / 60:.1f} min each)"
            parts.append(text)
        else:
            parts.append("no sampling (sample_every_n_epochs 0)")
        if self.share_of_training is not None:
            parts.append(f"{100 * self.share_of_training:.1f}% of the training time ({self.status})")
        if self.sampling_points and self.sampling_peak_gib is not None:
            parts.append(f"sampling peak {self.sampling_peak_gib:.1f} GiB with the VAE decoder's {self.vae_decoder_gib:.1f}")
        return "; ".join(parts)


def validation_images(samples_per_epoch: int) -> int:
    return min(MAX_IMAGES, max(MIN_IMAGES, samples_per_epoch // SAMPLES_PER_IMAGE))


def sampling_points(config: TrainingConfig, sessions: int = 1) -> int:
    """Grids over the run: every N-th epoch but the last, the run's end, and one at each session's stop."""
    every = config.sample_every_n_epochs
    if not every:
        return 0
    return (config.max_train_epochs - 1) // every + 1 + max(0, sessions - 1)


def _prompt_shapes(config: TrainingConfig) -> list[tuple[int, int, int, float]]:
    """(width, height, steps, guidance) per prompt: the file's, else DATASET_PROMPTS captions at the run's square."""
    prompts = check_sample_prompts(config)  # a bad file is refused here, before the download
    if not prompts:
        return [(config.resolution, config.resolution, DEFAULT_STEPS, DEFAULT_GUIDANCE)] * DATASET_PROMPTS
    return [(p.width or config.resolution, p.height or config.resolution, p.steps or DEFAULT_STEPS,
             DEFAULT_GUIDANCE if p.guidance is None else p.guidance) for p in prompts]


def estimate(config: TrainingConfig, eff: Effective, sec_per_step: float | None, peak_tflops: float | None,
             memory_precision: str, sessions: int = 1) -> ExtraWork:
    """Validation and sampling of the run planned in `eff`, priced from `sec_per_step` (an optimizer step).

    memory_precision: the precision the memory model counts (plan._memory's rule); sessions: how many
    the run needs (each stop but the last samples once more).
    """
    scale = None
    if sec_per_step is not None:
        micro = sec_per_step / eff.micro_batches_per_step * eff.processes  # one micro-batch on one GPU
        model_step = step_seconds(peak_tflops, config.resolution, eff.batch_size, eff.gradient_checkpointing, eff.compile_mode)
        scale = micro / model_step  # the table's calibration of this GPU against the step model

    def forward_s(side: float) -> float | None:
        return None if scale is None else scale * forward_seconds(peak_tflops, int(side), "none")

    images = validation_images(eff.steps.samples_per_epoch)
    val_forwards = images * VALIDATION_SIGMAS
    fwd = forward_s(config.resolution)
    val_epoch = None if fwd is None else val_forwards * fwd

    shapes = _prompt_shapes(config) if config.sample_every_n_epochs else []
    points = sampling_points(config, sessions)
    per_point_forwards = sum(steps * (2 if guidance > 1 else 1) for _, _, steps, guidance in shapes)
    per_point = None
    if scale is not None and shapes:
        decode = sum(VAE_DECODE_S_768_H100 * (H100_PEAK_TFLOPS / (peak_tflops or 100.0)) * (w * h / 768**2) for w, h, _, _ in shapes)
        per_point = VAE_LOAD_S + decode + sum(
            steps * (2 if guidance > 1 else 1) * forward_s(math.sqrt(w * h)) for w, h, steps, guidance in shapes)
    base_row = per_point if points else 0.0

    total = train = share = None
    if scale is not None:
        total = val_epoch * config.max_train_epochs + (per_point or 0.0) * points + (base_row or 0.0)
        train = sec_per_step * eff.total_steps
        share = total / train if train else None
    vae = sampling_peak = None
    if shapes:
        pixels = max(w * h for w, h, _, _ in shapes) / 768**2
        vae = round(VAE_DECODER_GIB_768 * pixels, 2)
        static = predict_peak_gib(config.resolution, 0, config.network_dim, eff.gradient_checkpointing,
                                  memory_precision, eff.compile_mode)
        sampling_peak = round(static + INFERENCE_ACTIVATIONS_GIB_768 * pixels + vae, 2)
    return ExtraWork(
        validation_images=images, validation_forwards_per_epoch=val_forwards,
        validation_s_per_epoch=None if val_epoch is None else round(val_epoch, 1),
        sampling_points=points, sampling_forwards_per_point=per_point_forwards,
        sampling_s_per_point=None if per_point is None else round(per_point, 1),
        base_row_s=None if per_point is None or not points else round(base_row, 1),
        total_s=None if total is None else round(total, 1), share_of_training=None if share is None else round(share, 4),
        last_sampling_s=round(per_point or 0.0, 1) if points else 0.0,
        sampling_peak_gib=sampling_peak, vae_decoder_gib=vae,
    )  # fmt: skip
