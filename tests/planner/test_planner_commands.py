"""`anima-lora plan` output and exit codes, and the flow's plan task body."""

import io
import json

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.planner.commands import run_plan
from anima_lora_flow.platforms.detect import detect_platform
from anima_lora_flow.core.gpu import GpuInfo

T4 = GpuInfo(name="Tesla T4", memory_gib=14.7, capability=(7, 5))
SPB = {(768, 768): 150}


# The table's eager, checkpointed rate: these tests check exits and messages, not the fast path.
EAGER = {"gradient_checkpointing": True, "compile_mode": "none"}


def run(cfg, platform, **kw):
    out, err = io.StringIO(), io.StringIO()
    code = run_plan(cfg, SPB, gpu=kw.pop("gpu", None), as_json=kw.pop("as_json", False), platform=platform, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def colab():
    return detect_platform({"COLAB_GPU": "1"}, uptime_s=0, gpu=T4)


def test_fitting_plan_prints_steps_time_sessions_memory():
    code, out, err = run(TrainingConfig(dataset="/d"), colab())
    assert code == 0 and err == ""
    for word in ("1,500", "s/step", "fits in this session", "GiB"):
        assert word in out


def test_stop_exits_2_with_a_one_line_error_and_suggestions():
    cfg = TrainingConfig(dataset="/d", mixed_precision="bf16", session_budget_hours=4.0, **EAGER, storage="/content/runs")
    code, out, err = run(cfg, colab())
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith("error: ") and "sessions" in lines[0]
    assert any(line.strip().startswith("try: --max-train-epochs") for line in lines[1:])


def test_resume_exits_0():
    cfg = TrainingConfig(dataset="/d", mixed_precision="bf16", session_budget_hours=4.0, **EAGER, storage="/content/drive/MyDrive/r")
    code, out, _ = run(cfg, colab())
    assert code == 0 and "resume" in out


def test_json_and_named_gpu():
    code, out, _ = run(TrainingConfig(dataset="/d"), detect_platform({}, gpu=lambda: None), gpu="RTX 4090", as_json=True)
    data = json.loads(out)
    assert code == 0 and data["gpu"] == "RTX 4090" and data["gpu_source"] == "named"


def test_unknown_gpu_is_an_error():
    code, _, err = run(TrainingConfig(dataset="/d"), detect_platform({}, gpu=lambda: None), gpu="Voodoo")
    assert code == 2 and err.startswith("error: unknown GPU")


class FakeReport:
    def samples_per_bucket(self):
        return SPB


def test_plan_task_body(monkeypatch):
    import pytest

    from anima_lora_flow.errors import UserInputError
    from anima_lora_flow.tasks import plan as plan_module

    artifacts = []
    monkeypatch.setattr(plan_module, "create_markdown_artifact", lambda **kw: artifacts.append(kw))
    monkeypatch.setattr(plan_module, "detect_platform", lambda **kw: detect_platform({"COLAB_GPU": "1"}, uptime_s=0, gpu=T4, **kw))
    plan = plan_module.plan_task.fn(TrainingConfig(dataset="/d", project_name="My_LoRA.v2"), FakeReport())
    assert plan.steps.total_steps == 1500
    assert artifacts[0]["key"] == "plan-my-lora-v2" and artifacts[0]["markdown"].startswith("# Plan")
    cfg = TrainingConfig(dataset="/d", mixed_precision="bf16", session_budget_hours=4.0, **EAGER, storage="/content/runs")
    with pytest.raises(UserInputError):
        plan_module.plan_task.fn(cfg, FakeReport())
    assert len(artifacts) == 2  # the plan is published before the stop
