"""Speed options: regional compilation and the attention backend change speed, never the result."""

from __future__ import annotations

import pytest
import torch

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.components import build_transformer, speed_up_transformer
from anima_lora_flow.trainer.lora import build_lora_model
from anima_lora_flow.trainer.loss import Objective, compute_loss


def _model(tiny_model):
    return build_lora_model(build_transformer(tiny_model, torch.float32, gradient_checkpointing=True), 4, 4, seed=0)


def _loss(model):
    gen = torch.Generator().manual_seed(3)
    batch = {"latents": torch.randn(1, 16, 1, 8, 8, generator=gen), "context": torch.randn(1, 16, 32, generator=gen)}
    return compute_loss(model, batch, Objective(), torch.Generator().manual_seed(5))


def test_compiled_blocks_give_the_same_loss_and_gradients(tiny_model):
    plain = _model(tiny_model)
    compiled = speed_up_transformer(_model(tiny_model), compile_blocks=True, compile_backend="eager")
    loss_plain, loss_compiled = _loss(plain), _loss(compiled)
    assert torch.allclose(loss_plain, loss_compiled, atol=1e-6)
    loss_plain.backward()
    loss_compiled.backward()
    grads = [(a.grad, b.grad) for a, b in zip(plain.parameters(), compiled.parameters()) if a.requires_grad]
    assert grads and all(torch.allclose(a, b, atol=1e-6) for a, b in grads)
    # Parameter names, and so the LoRA and state files, are those of the uncompiled model.
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in compiled.named_parameters()]


def test_unknown_attention_backend_is_a_user_error(tiny_model):
    with pytest.raises(UserInputError, match="--attention-backend no_such_kernel"):
        speed_up_transformer(_model(tiny_model), attention_backend="no_such_kernel")
