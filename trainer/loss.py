"""The flow-matching objective (anima-internals §A3): a pure function of model, batch and generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import NotBuiltError


@dataclass(frozen=True)
class Objective:
    timestep_sampling: str = "sigmoid"
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 1.0


def sample_sigmas(batch: int, objective: Objective, generator: torch.Generator) -> torch.Tensor:
    """Noise levels s in (0, 1), one per sample, drawn as kohya's flux_train_utils does.

    Raises:
        NotBuiltError: for 'flux_shift' and 'sigma', which this trainer does not implement yet.
    """
    device = generator.device
    mode = objective.timestep_sampling
    if mode == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    if mode in ("sigmoid", "shift"):
        sigmas = torch.sigmoid(objective.sigmoid_scale * torch.randn(batch, generator=generator, device=device))
        if mode == "shift":
            shift = objective.discrete_flow_shift
            sigmas = sigmas * shift / (1 + (shift - 1) * sigmas)
        return sigmas
    raise NotBuiltError(
        f"timestep_sampling={mode!r} is not built in the native trainer; use 'sigmoid', 'uniform' or 'shift' "
        "(or trainer='sd-scripts')"
    )


def draw_noise(x0: torch.Tensor, objective: Objective, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise like x0, sigmas (B,)): the step's random draws, noise first, on the generator's device.

    Kept out of flow_matching_loss: dynamo cannot trace a torch.Generator (a graph break), and drawn
    here on the device they cost no host sync, compiled or not.
    """
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    sigmas = sample_sigmas(x0.shape[0], objective, generator).to(x0.device)
    return noise, sigmas


def flow_matching_loss(model: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                       context: torch.Tensor) -> torch.Tensor:
    """MSE in fp32 between the predicted and the true velocity (noise - x0) at noise levels `sigmas`.

    x_t = (1 - s) x0 + s e; the DiT gets timestep s in [0, 1], exactly what diffusers' Anima denoise
    step passes (scheduler t / num_train_timesteps). Tensors in, a tensor out and no host reads: the
    function that trainer/compiled.py compiles whole.
    """
    dtype = next(p for p in model.parameters()).dtype
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    # diffusers repeats padding_mask by the batch size itself, so it is passed with batch 1.
    padding_mask = x0.new_zeros(1, 1, x0.shape[-2], x0.shape[-1], dtype=dtype)
    pred = model(
        hidden_states=noisy.to(dtype),
        timestep=sigmas.to(dtype),
        encoder_hidden_states=context.to(dtype),
        padding_mask=padding_mask,
        return_dict=False,
    )[0]
    return F.mse_loss(pred.float(), (noise - x0).float())


LossFunction = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def compute_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    objective: Objective,
    generator: torch.Generator,
    loss_function: LossFunction = flow_matching_loss,
) -> torch.Tensor:
    """The flow-matching loss of `batch` (latents (B, 16, 1, h, w), already normalised) at a random noise level.

    `loss_function` is flow_matching_loss itself or its compiled form (trainer/compiled.py); the draws
    are the same either way.
    """
    x0 = batch["latents"]
    noise, sigmas = draw_noise(x0, objective, generator)
    return loss_function(model, x0, noise, sigmas, batch["context"])
