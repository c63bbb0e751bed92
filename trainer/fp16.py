"""fp16 training on GPUs without bf16 (a T4): keep the two places that overflow in fp32.

Anima's DiT was trained in bf16, whose range is fp32's; fp16 stops at 65504. Users of the other
trainers got NaN losses and black samples in fp16 (sd-scripts #2274), and kohya traced them to two
places (sd-scripts #2277 and #2302, v0.10.2/v0.10.3): the residual stream, which grows over the 28
blocks, and the adaLN modulation linears (shift, scale, gate from the timestep embedding). So here:

- every block receives its residual stream in fp32; autocast still runs the block's big matmuls in
  fp16, and `x + gate * out` promotes back to fp32, so the stream never rounds or saturates;
- every adaLN module (norm1-3 of each block, norm_out) runs in fp32 outside autocast, with its own
  weights in fp32 (at full size about 176 M parameters: ~350 MB more than fp16).

The rest (attention, MLP, LoRA matmuls) stays in fp16 under autocast with loss scaling. This follows
kohya's diagnosis; whether it is enough for every Anima checkpoint has not been measured here (no GPU
was available): the trainer's divergence guard stops a run whose loss still turns NaN.
"""

from __future__ import annotations

import torch


class Fp32Island(torch.nn.Module):
    """Runs `inner` in fp32 with autocast off, whatever dtype its inputs arrive in."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner.float()

    def forward(self, *args, **kwargs):
        args = tuple(_to_fp32(a) for a in args)
        kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return self.inner(*args, **kwargs)


def protect_fp16(transformer: torch.nn.Module) -> torch.nn.Module:
    """Apply both fp32 islands to a Cosmos DiT in place (idempotent); returns it."""
    for block in transformer.transformer_blocks:
        for name in ("norm1", "norm2", "norm3"):
            _island(block, name)
        if not getattr(block, "_fp32_residual", False):
            block.register_forward_pre_hook(_residual_to_fp32, with_kwargs=True)
            block._fp32_residual = True
    _island(transformer, "norm_out")
    return transformer


def _island(parent: torch.nn.Module, name: str) -> None:
    module = getattr(parent, name)
    if not isinstance(module, Fp32Island):
        setattr(parent, name, Fp32Island(module))


def _residual_to_fp32(_module, args, kwargs):
    # diffusers passes hidden_states first, positionally (also through gradient checkpointing) or by name
    if args:
        return (_to_fp32(args[0]), *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": _to_fp32(kwargs["hidden_states"])}
    return None


def _to_fp32(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value
