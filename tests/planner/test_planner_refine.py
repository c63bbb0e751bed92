"""The measured rate replaces the table's once training runs."""

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.planner.plan import make_plan
from anima_lora_flow.planner.refine import refine
from anima_lora_flow.platforms.detect import detect_platform
from anima_lora_flow.core.gpu import GpuInfo

NOW = 1_700_000_000.0
T4 = GpuInfo(name="Tesla T4", memory_gib=14.7, capability=(7, 5))


def test_refine_sharpens_the_estimate():
    platform = detect_platform({"COLAB_GPU": "1"}, uptime_s=0, gpu=T4, now=NOW)
    cfg = TrainingConfig(dataset="/d", storage="/content/drive/MyDrive/r", max_train_epochs=100, gradient_checkpointing=True,
                         compile_mode="none")  # the table's eager rate
    plan = make_plan(cfg, {(768, 768): 150}, platform, now=NOW)
    assert plan.fits is False and plan.decision == "resume"  # 15,000 x 4.8 s = 20 h
    refined = refine(plan, 2.0, 1000, now=NOW + 3600)
    assert refined.sec_per_step == 2.0 and refined.rate_status == "measured"
    assert refined.train_hours == pytest.approx(14000 * 2.0 / 3600, abs=0.01)
    assert refined.session_hours_left == pytest.approx(11.0)
    assert refined.fits and refined.decision == "ok"
    slower = refine(plan, 20.0, 1000, now=NOW + 3600)
    assert slower.fits is False and slower.decision == "resume" and slower.sessions_needed == 7  # 77.8 h: 10.9 h now + 6 x 11.7 h
