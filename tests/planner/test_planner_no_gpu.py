"""A Colab or Kaggle session without a GPU stops before any download, saying where the GPU switch is."""

from __future__ import annotations

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.planner.plan import enforce_plan, make_plan
from anima_lora_flow.platforms.detect import detect_platform

SAMPLES = {(768, 768): 50}


@pytest.mark.parametrize(
    ("env", "fix"),
    [
        ({"COLAB_RELEASE_TAG": "release-colab_20261101"}, "Runtime > Change runtime type > T4 GPU"),
        ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "Settings > Accelerator > GPU T4 x2"),
    ],
)
def test_no_gpu_on_a_notebook_stops(env, fix):
    platform = detect_platform(env=env, uptime_s=60, gpu=lambda: None, has_module=lambda name: False)
    plan = make_plan(TrainingConfig(dataset="d", storage="/kaggle/working/runs"), SAMPLES, platform)
    with pytest.raises(UserInputError, match="has no GPU") as err:
        enforce_plan(plan)
    assert fix in str(err.value)


def test_no_gpu_is_fine_for_the_tiny_demo_model():
    platform = detect_platform(env={"COLAB_RELEASE_TAG": "x"}, uptime_s=60, gpu=lambda: None, has_module=lambda n: False)
    plan = make_plan(TrainingConfig(dataset="d", models_dir="/tiny"), SAMPLES, platform)
    assert plan.decision != "stop" or "has no GPU" not in plan.reason
