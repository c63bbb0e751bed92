"""Validation and sampling in the plan: their time per run and session, the VAE decoder's memory, the guard's share."""

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.planner import extras
from anima_lora_flow.planner.plan import RESERVE_S, SETUP_S, make_plan
from anima_lora_flow.platforms.detect import detect_platform

NOW = 1_700_000_000.0
SEED_DATA = {(768, 768): 30 * 5}


def plan(gpu="T4", data=SEED_DATA, **kw):
    platform = detect_platform({}, gpu=lambda: None, now=NOW)
    return make_plan(TrainingConfig(dataset="/d", **kw), data, platform, gpu=gpu, now=NOW, cwd="/tmp")


def test_t4_defaults_spend_at_most_a_tenth_on_validation_and_sampling():
    p = plan()
    assert p.extras.sampling_points == 0  # sampling is off by default
    assert p.extras.validation_images == 6 and p.extras.validation_forwards_per_epoch == 24  # 150 samples / 25, x 4 levels
    assert 0 < p.extras.share_of_training <= 0.10
    assert p.extra_hours == pytest.approx(p.extras.total_s / 3600, abs=0.01)
    assert "validation 6 images x 4 noise levels" in p.to_text() and "% of the training time" in p.to_text()


def test_sampling_counts_its_forwards_grids_and_base_row():
    p = plan(sample_every_n_epochs=5)
    e = p.extras
    assert e.sampling_points == 2  # after epoch 5 and at the end (epoch 10); the base row once besides
    assert e.sampling_forwards_per_point == 4 * 20 * 2  # 4 dataset captions x 20 steps x 2 for guidance
    assert e.base_row_s == e.sampling_s_per_point and e.last_sampling_s == e.sampling_s_per_point
    validation = e.validation_s_per_epoch * 10
    assert e.total_s == pytest.approx(validation + 3 * e.sampling_s_per_point, rel=1e-3)
    assert e.vae_decoder_gib > 0 and e.sampling_peak_gib > e.vae_decoder_gib
    assert e.share_of_training > plan().extras.share_of_training


def test_prompt_file_sets_the_sampling_cost(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat --s 10 --w 512 --h 512\na dog --s 10 --l 1\n")
    e = plan(sample_every_n_epochs=10, sample_prompts=str(prompts)).extras
    assert e.sampling_forwards_per_point == 10 * 2 + 10 * 1  # guidance 1 needs no unconditioned forward
    assert e.sampling_points == 1


def test_extra_time_moves_the_session_count():
    # A budget that the steps alone fit but the steps plus sampling do not.
    base = plan(gradient_checkpointing=True, compile_mode="none", sample_every_n_epochs=1)
    steps_h = base.train_hours
    budget = (steps_h * 3600 + SETUP_S + RESERVE_S + 60) / 3600
    tight = plan(gradient_checkpointing=True, compile_mode="none", sample_every_n_epochs=1, session_budget_hours=budget)
    assert tight.fits is False and "validation and sampling" in tight.reason
    assert plan(gradient_checkpointing=True, compile_mode="none", session_budget_hours=budget * 1.2).fits


def test_cpu_plan_has_no_times_but_counts_the_work():
    platform = detect_platform({}, gpu=lambda: None, now=NOW)
    p = make_plan(TrainingConfig(dataset="/d", models_dir="/tiny", sample_every_n_epochs=2), SEED_DATA, platform, now=NOW, cwd="/tmp")
    assert p.extras.total_s is None and p.extras.sampling_points == 5 and p.extras.last_sampling_s == 0.0


def test_validation_numbers_match_the_trainer():
    from anima_lora_flow.trainer import validation

    assert extras.VALIDATION_SIGMAS == len(validation.SIGMA_QUANTILES)
    assert (extras.SAMPLES_PER_IMAGE, extras.MIN_IMAGES, extras.MAX_IMAGES) == (
        validation.SAMPLES_PER_IMAGE, validation.MIN_IMAGES, validation.MAX_IMAGES)
    for samples in (10, 150, 1000):
        assert extras.validation_images(samples) == validation.image_limit(samples)
