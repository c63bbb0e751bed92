"""The optimizer the config asks for is the one built, and its description is what the LoRA metadata records."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.effective import Machine, derive
from anima_lora_flow.trainer.native import NativeBackend
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.loop import build_optimizer, describe_optimizer

NATIVE = NativeBackend.numbers

SAMPLES = {(768, 768): 10}


def _build(optimizer: str):
    cfg = TrainingConfig(dataset="d", optimizer=optimizer)
    params = [torch.nn.Parameter(torch.zeros(4, 4))]
    return build_optimizer(params, cfg, derive(cfg, SAMPLES, Machine(), NATIVE))


def test_auto_builds_torch_adamw_with_the_fast_kernel_for_the_device():
    built = _build("auto")
    assert type(built) is torch.optim.AdamW and built.defaults["foreach"] is True  # CPU; fused on CUDA
    assert describe_optimizer(built) == "torch.optim.adamw.AdamW(foreach=True,weight_decay=0.1,betas=(0.9, 0.99))"


def test_adafactor_is_built_without_its_own_schedule():
    built = _build("adafactor")
    assert type(built).__name__ == "Adafactor" and built.defaults["relative_step"] is False


def test_adamw8bit_is_built_or_refused_never_replaced():
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(UserInputError, match=r"pip install bitsandbytes"):
            _build("adamw8bit")
    else:
        assert type(_build("adamw8bit")).__name__ == "AdamW8bit"
