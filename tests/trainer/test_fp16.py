"""fp16's fp32 islands (trainer/fp16.py): no change in fp32, no overflow where plain fp16 overflows.

The overflow is made to happen on the tiny model by scaling one adaLN modulation weight, so that its
shift/scale/gate exceed fp16's 65504 while staying ordinary numbers in fp32; CPU autocast runs fp16.
"""

from __future__ import annotations

import pytest
import torch

from anima_lora_flow.trainer.components import build_transformer
from anima_lora_flow.trainer.fp16 import Fp32Island, protect_fp16
from anima_lora_flow.trainer.lora import adapter_state_dict, build_lora_model, lora_parameters
from anima_lora_flow.trainer.loss import Objective, compute_loss

OVERFLOW = 1e4  # block 0's adaLN linear_2 times this: finite in fp32, inf in fp16


def _model(tiny_model, dtype, scale=1.0):
    model = build_transformer(tiny_model, dtype, gradient_checkpointing=False)
    with torch.no_grad():
        norm1 = model.transformer_blocks[0].norm1
        (norm1.inner if isinstance(norm1, Fp32Island) else norm1).linear_2.weight.mul_(scale)
    return model


def _forward(model, dtype, inputs):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16, enabled=dtype == torch.float16):
        return model(**inputs(batch=1, dtype=dtype))[0].float()


def test_in_fp32_the_islands_change_nothing(tiny_model, tiny_inputs):
    plain = _model(tiny_model, torch.float32)
    expected = _forward(plain, torch.float32, tiny_inputs)
    protected = protect_fp16(protect_fp16(plain))  # twice: idempotent
    assert isinstance(protected.transformer_blocks[0].norm1, Fp32Island)
    assert not isinstance(protected.transformer_blocks[0].norm1.inner, Fp32Island)
    assert torch.equal(_forward(protected, torch.float32, tiny_inputs), expected)


def test_fp16_weights_get_the_islands_from_the_trainer_builder(tiny_model):
    model = _model(tiny_model, torch.float16)
    assert all(isinstance(b.norm2, Fp32Island) for b in model.transformer_blocks) and isinstance(model.norm_out, Fp32Island)
    assert model.transformer_blocks[0].norm1.inner.linear_2.weight.dtype == torch.float32
    assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float16  # the big matmuls stay fp16
    assert not isinstance(_model(tiny_model, torch.bfloat16).norm_out, Fp32Island)


def test_islands_prevent_the_overflow_plain_fp16_suffers(tiny_model, tiny_inputs):
    reference = _forward(_model(tiny_model, torch.float32, OVERFLOW), torch.float32, tiny_inputs)
    assert torch.isfinite(reference).all()

    from diffusers import CosmosTransformer3DModel

    plain = CosmosTransformer3DModel.from_pretrained(tiny_model / "transformer", torch_dtype=torch.float16)
    with torch.no_grad():
        plain.transformer_blocks[0].norm1.linear_2.weight.mul_(OVERFLOW)
    assert not torch.isfinite(_forward(plain, torch.float16, tiny_inputs)).all()  # the failure users reported

    protected = _forward(_model(tiny_model, torch.float16, OVERFLOW), torch.float16, tiny_inputs)
    assert torch.isfinite(protected).all()
    assert (protected - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_lora_trains_under_fp16_autocast_with_loss_scaling(tiny_model, gradient_checkpointing):
    transformer = build_transformer(tiny_model, torch.float16, gradient_checkpointing)
    with torch.no_grad():
        transformer.transformer_blocks[0].norm1.inner.linear_2.weight.mul_(OVERFLOW)
    model = build_lora_model(transformer, 4, 4, seed=0)
    params = lora_parameters(model)
    assert all(p.dtype == torch.float32 for p in params)  # fp32 master weights, as GradScaler needs
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(1, 16, 1, 8, 8, generator=g), "context": torch.randn(1, 16, 32, generator=g)}
    losses = []
    model.train()
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = compute_loss(model, batch, Objective("sigmoid", 1.0, 1.0), torch.Generator().manual_seed(1))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in adapter_state_dict(model).items() if "lora_B" in k)
    assert all(k.startswith("transformer_blocks.") for k in adapter_state_dict(model))  # islands rename nothing saved
