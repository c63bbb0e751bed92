"""Peak VRAM predictions against the measured points, and advice that only lists what fits."""

import pytest

from anima_lora_flow.core.step_model import CUDA_CONTEXT_GIB, REAL_MODEL_EXTRA_GIB
from anima_lora_flow.planner.memory import (
    check_memory,
    predict_peak_gib,
)

OVERHEAD = CUDA_CONTEXT_GIB + REAL_MODEL_EXTRA_GIB


@pytest.mark.parametrize(
    ("resolution", "batch", "gc", "measured"),
    [(768, 1, True, 4.02), (768, 4, True, 5.65), (768, 1, False, 9.47), (768, 4, False, 27.4), (1024, 2, False, 24.4)],
)
def test_reproduces_the_synthetic_measurements(resolution, batch, gc, measured):
    # The measurements are rank 16 without CUDA context or the real model's extra modules.
    assert predict_peak_gib(resolution, batch, 16, gc) - OVERHEAD == pytest.approx(measured, abs=0.4)


def test_seed_defaults_fit_a_t4():
    estimate = check_memory(768, 1, 20, True, "bf16", 14.7)
    assert estimate.fits
    assert 4.5 < estimate.predicted_gib < 6.5  # the seed's "~6 GB on a free T4"
    assert estimate.options == []


def test_advice_is_computed_for_the_gpu():
    # 1024² without checkpointing at batch 2 does not fit 15 GiB; GC alone or 512 px alone is enough,
    # while batch 1 or dim 8 alone is not (so they are not offered).
    estimate = check_memory(1024, 2, 32, False, "bf16", 14.7)
    assert not estimate.fits
    assert [o.changes for o in estimate.options] == [{"gradient_checkpointing": True}, {"resolution": 512}]
    assert all(o.predicted_gib <= 14.7 * 0.95 for o in estimate.options)


def test_small_gpu_gets_only_combinations_that_fit():
    # A 5 GiB card at the seed defaults: no single change fits, dim 8 + 512 px does.
    estimate = check_memory(768, 1, 20, True, "bf16", 5.0)
    assert not estimate.fits
    assert [o.changes for o in estimate.options] == [{"network_dim": 8, "resolution": 512}]
    assert estimate.options[0].predicted_gib <= 5.0 * 0.95


def test_nothing_fits_a_tiny_gpu():
    estimate = check_memory(768, 1, 20, True, "bf16", 2.0)
    assert estimate.fits is False and estimate.options == []


def test_no_gpu_no_verdict():
    assert check_memory(768, 1, 20, True, "bf16", None).fits is None


def test_fp16_counts_the_fp32_islands_and_fp32_the_full_weights():
    bf16 = predict_peak_gib(768, 1, 20, True, "bf16")
    assert predict_peak_gib(768, 1, 20, True, "fp16") == pytest.approx(bf16 + 0.45)
    assert predict_peak_gib(768, 1, 20, True, "no") == pytest.approx(bf16 + 3.9)
