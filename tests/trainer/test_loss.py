"""compute_loss and the noise-level draws, on the tiny DiT with tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from anima_lora_flow.errors import NotBuiltError
from anima_lora_flow.trainer.components import build_transformer
from anima_lora_flow.trainer.loss import Objective, compute_loss, sample_sigmas


@pytest.mark.parametrize("mode", ["sigmoid", "uniform", "shift"])
def test_sigmas_in_unit_interval(mode):
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(1000, Objective(mode, 1.0, 3.0), g)
    assert s.shape == (1000,) and bool(((s > 0) & (s < 1)).all())


def test_shift_moves_noise_up():
    draw = lambda mode: sample_sigmas(2000, Objective(mode, 1.0, 3.0), torch.Generator().manual_seed(0)).mean()  # noqa: E731
    assert draw("shift") > draw("sigmoid")


@pytest.mark.parametrize("mode", ["flux_shift", "sigma"])
def test_unbuilt_modes_name_the_setting(mode):
    with pytest.raises(NotBuiltError, match="timestep_sampling"):
        sample_sigmas(1, Objective(mode), torch.Generator())


def test_loss_is_finite_fp32_and_deterministic(tiny_model):
    model = build_transformer(tiny_model, torch.float32, gradient_checkpointing=False)
    batch = {"latents": torch.randn(2, 16, 1, 8, 8), "context": torch.randn(2, 16, 32)}
    loss = compute_loss(model, batch, Objective(), torch.Generator().manual_seed(1))
    again = compute_loss(model, batch, Objective(), torch.Generator().manual_seed(1))
    assert loss.dtype == torch.float32 and loss.ndim == 0 and math.isfinite(loss.item())
    assert torch.equal(loss, again)
