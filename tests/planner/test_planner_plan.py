"""make_plan / enforce_plan: timing, sessions, the overrun decision and suggestions that really fit."""

import json

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.planner.plan import RESERVE_S, SETUP_S, enforce_plan, make_plan
from anima_lora_flow.planner.steps import count_steps, with_repeats
from anima_lora_flow.platforms.detect import detect_platform
from anima_lora_flow.core.gpu import GpuInfo

NOW = 1_700_000_000.0
HOUR = 3600.0
T4 = GpuInfo(name="Tesla T4", memory_gib=14.7, capability=(7, 5), arch_list=["sm_75", "sm_80", "sm_90"])
P100 = GpuInfo(name="Tesla P100-PCIE-16GB", memory_gib=15.9, capability=(6, 0), arch_list=["sm_75", "sm_80", "sm_90"])
SEED_DATA = {(768, 768): 30 * 5}  # the seed's example: 30 images x 5 repeats


def colab(age_h=0.0, gpu=T4, budget=None):
    return detect_platform({"COLAB_RELEASE_TAG": "r"}, uptime_s=age_h * HOUR, gpu=gpu, session_budget_hours=budget, now=NOW)


def local(gpu=None):
    return detect_platform({}, gpu=lambda: gpu, now=NOW)


def config(**kw):
    kw.setdefault("dataset", "/data")
    # The session arithmetic below is checked at the table's eager, checkpointed rate (4.8 s on a T4);
    # the fast path's own choices are tested in test_planner_fast_path.py.
    kw.setdefault("gradient_checkpointing", True)
    kw.setdefault("compile_mode", "none")
    return TrainingConfig(**kw)


def plan_for(cfg, platform, spb=SEED_DATA, **kw):
    return make_plan(cfg, spb, platform, now=NOW, cwd="/content", **kw)


class TestFits:
    def test_seed_defaults_on_a_fresh_colab_t4(self):
        plan = plan_for(config(), colab())
        assert plan.steps.total_steps == 1500
        assert plan.precision == "fp16"  # auto on a T4
        assert plan.fits and plan.decision == "ok" and plan.sessions_needed == 1
        assert plan.session_hours_left == 12.0

    def test_old_vm_has_less_left(self):
        plan = plan_for(config(), colab(age_h=10.0))
        assert plan.session_hours_left == 2.0
        assert plan.fits is False  # 1500 x 4.8 s = 2 h, plus setup and the reserve

    def test_local_has_no_limit(self):
        plan = plan_for(config(max_train_epochs=500), local(T4))
        assert plan.fits and plan.sessions_needed == 1 and plan.session_hours_left is None

    def test_session_budget_overrides_the_platform(self):
        plan = plan_for(config(session_budget_hours=1.0), local(T4))
        assert plan.session_limit_hours == 1.0
        assert plan.fits is False

    def test_cpu_claims_no_gpu_time(self):
        plan = plan_for(config(models_dir="/tiny"), local(None))  # only a small local model trains on a CPU
        assert plan.sec_per_step is None and plan.train_hours is None
        assert plan.gpu is None and plan.decision == "ok"
        assert any("CPU" in w for w in plan.warnings)


class TestOverrun:
    """The seed's bf16 run on a T4: 1500 steps x 14.4 s = 6 h, in a session with 4 h of usable time."""

    def usable_budget_h(self, steps=1000, sec=14.4):
        return (steps * sec + SETUP_S + RESERVE_S) / HOUR

    def cfg(self, **kw):
        return config(mixed_precision="bf16", session_budget_hours=self.usable_budget_h(), **kw)

    def test_auto_with_ephemeral_storage_stops(self):
        plan = plan_for(self.cfg(storage="/content/runs"), colab())
        assert plan.fits is False and plan.decision == "stop"
        assert plan.sessions_needed == 2
        with pytest.raises(UserInputError) as info:
            enforce_plan(plan)
        assert info.value.field == "on_overrun"
        assert "1500 steps" in str(info.value) and "--max-train-epochs 6" in str(info.value)

    def test_auto_with_drive_resumes(self):
        plan = plan_for(self.cfg(storage="/content/drive/MyDrive/runs"), colab())
        assert plan.decision == "resume" and plan.storage_durable
        enforce_plan(plan)  # does not raise

    def test_relative_storage_on_kaggle_working_is_durable(self):
        kaggle = detect_platform({"KAGGLE_KERNEL_RUN_TYPE": "Batch"}, uptime_s=0, gpu=T4, now=NOW,
                                 session_budget_hours=self.usable_budget_h())
        plan = make_plan(self.cfg(storage="./runs"), SEED_DATA, kaggle, now=NOW, cwd="/kaggle/working")
        assert plan.decision == "resume"
        assert any("Save & Run" in w for w in plan.warnings)

    def test_resume_without_durable_storage_stops_and_names_the_fix(self):
        plan = plan_for(self.cfg(storage="/content/runs", on_overrun="resume"), colab())
        assert plan.decision == "stop"
        assert "/content/drive/MyDrive" in plan.reason

    def test_explicit_stop_and_proceed(self):
        durable = "gs://bucket/runs"
        assert plan_for(self.cfg(storage=durable, on_overrun="stop"), colab()).decision == "stop"
        assert plan_for(self.cfg(storage=durable, on_overrun="proceed"), colab()).decision == "proceed"

    def test_suggestions_fit_the_budget_with_real_arithmetic(self):
        plan = plan_for(self.cfg(storage="/content/runs"), colab())
        by_setting = {s.setting: s for s in plan.suggestions}
        # 1000 steps fit: the seed would say repeats 4 (1200 steps) and epochs 5 (halved).
        assert by_setting["repeats"].value == 3 and by_setting["repeats"].total_steps == 900
        assert by_setting["max_train_epochs"].value == 6 and by_setting["max_train_epochs"].total_steps == 900
        assert by_setting["mixed_precision"].value == "fp16"  # 1500 x 4.8 s = 2 h fits
        assert by_setting["on_overrun"].value == "resume"
        for s in plan.suggestions:
            if s.setting != "on_overrun":
                assert s.hours * HOUR <= 1000 * 14.4 + 1e-6

    def test_suggestions_use_bucket_arithmetic(self):
        # 3 buckets x 1 image x 4 repeats at batch 3: 2 batches per bucket. A naive ceil(12/3)=4 would be wrong.
        spb = {(768, 768): 4, (640, 896): 4, (896, 640): 4}
        cfg = config(repeats=4, batch_size=3, max_train_epochs=100, mixed_precision="bf16", storage="/content/x")
        steps = count_steps(spb, 3, 1, 100)
        assert steps.total_steps == 600
        full = plan_for(cfg, colab(), spb)
        sec = full.sec_per_step * (1 + full.extras.share_of_training)  # each step with its share of validation
        budget_h = (250 * sec + SETUP_S + RESERVE_S + 1) / HOUR  # room for 250 steps
        plan = plan_for(cfg.model_copy(update={"session_budget_hours": budget_h}), colab(), spb)
        by_setting = {s.setting: s for s in plan.suggestions}
        assert by_setting["max_train_epochs"].value == 41  # 6 steps per epoch
        # repeats 3 -> 1 batch per bucket = 3 steps/epoch = 300 > 250; repeats 2 -> 300 too; none fit at 100 epochs.
        assert count_steps(with_repeats(spb, 4, 1), 3, 1, 100).total_steps == 300
        assert "repeats" not in by_setting

    def test_session_too_short_for_anything(self):
        plan = plan_for(config(session_budget_hours=0.1, storage="gs://b/r"), colab())
        assert plan.decision == "stop" and plan.sessions_needed is None


class TestGpu:
    def test_unusable_gpu_stops_before_download(self):
        plan = plan_for(config(storage="/kaggle/working/r"), detect_platform({"KAGGLE_URL_BASE": "x"}, uptime_s=0, gpu=P100, now=NOW))
        assert plan.decision == "stop"
        assert "sm_60" in plan.reason and "T4" in plan.reason

    def test_named_gpu_replaces_the_detected_one(self):
        plan = plan_for(config(), local(None), gpu="h100")
        assert plan.gpu == "H100" and plan.gpu_source == "named" and plan.precision == "bf16"
        assert plan.sec_per_step == pytest.approx(0.688)  # issue 22's measured eager step
        assert plan.rate_status == "measured"

    def test_unknown_named_gpu(self):
        with pytest.raises(UserInputError, match="unknown GPU"):
            plan_for(config(), local(None), gpu="voodoo")

    def test_bf16_on_t4_warns(self):
        plan = plan_for(config(mixed_precision="bf16"), colab())
        assert plan.sec_per_step == 14.4
        assert any("emulated" in w for w in plan.warnings)

    def test_memory_advice_in_warnings(self):
        plan = plan_for(config(resolution=1024, batch_size=4, gradient_checkpointing=False), colab())
        assert plan.memory.fits is False
        assert any("would fit with" in w for w in plan.warnings)


class TestViews:
    def test_text_markdown_and_json(self):
        plan = plan_for(config(mixed_precision="bf16", session_budget_hours=2.0, storage="/content/x"), colab())
        text = plan.to_text()
        for word in ("Steps", "1,500", "Session", "Memory", "Decision", "stop"):
            assert word in text
        assert plan.to_markdown().startswith("# Plan: my_lora")
        dumped = json.loads(json.dumps(plan.model_dump(mode="json")))
        assert dumped["steps"]["total_steps"] == 1500 and dumped["decision"] == "stop"


class TestNamedGpuSession:
    def test_notebook_gpu_from_a_workstation_gets_a_fresh_12h_session(self):
        plan = plan_for(config(max_train_epochs=60), local(None), gpu="T4")  # 9000 x 4.8 s = 12 h
        assert plan.session_limit_hours == 12.0 and plan.session_hours_left == 12.0
        assert plan.fits is False and plan.sessions_needed == 2
        assert any("fresh session on T4" in w for w in plan.warnings)

    def test_named_gpu_ignores_this_vms_age(self):
        plan = plan_for(config(), colab(age_h=11.0), gpu="L4")
        assert plan.session_hours_left == 12.0 and plan.fits

    def test_consumer_gpu_has_no_limit_unless_budgeted(self):
        assert plan_for(config(max_train_epochs=500), local(None), gpu="RTX 4090").session_limit_hours is None
        assert plan_for(config(session_budget_hours=2.0), local(None), gpu="RTX 4090").session_limit_hours == 2.0

    def test_storage_is_judged_for_the_notebook(self):
        assert not plan_for(config(storage="/content/runs"), local(None), gpu="T4").storage_durable
        assert plan_for(config(storage="/content/drive/MyDrive/r"), local(None), gpu="T4").storage_durable
        assert plan_for(config(storage="/content/runs"), local(None), gpu="RTX 4090").storage_durable

    def test_a_local_folder_planned_for_a_notebook_gpu_says_where_it_is_lost(self):
        text = plan_for(config(storage="/tmp/runs"), local(None), gpu="T4").to_text()
        assert "kept here, but lost with a Colab/Kaggle session" in text

    def test_named_p100_is_refused_like_a_detected_one(self):
        plan = plan_for(config(), local(None), gpu="P100")
        assert plan.decision == "stop" and "sm_60" in plan.reason and "T4 x2" in plan.reason
        assert plan_for(config(), local(None), gpu="T4").decision == "ok"

    def test_a_session_too_short_for_setup_reads_in_minutes(self):
        plan = plan_for(config(session_budget_hours=0.01), local(None), gpu="T4")
        assert plan.decision == "stop" and "--session-budget-hours" in plan.reason
        assert "1 min left of 1 min; too short for setup and a checkpoint" in plan.to_text()


class TestDataParallel:
    T4X2 = GpuInfo(name="Tesla T4", memory_gib=14.7, capability=(7, 5), arch_list=["sm_75"], count=2)

    def kaggle(self, gpu):
        return detect_platform({"KAGGLE_URL_BASE": "x"}, uptime_s=0, gpu=gpu, now=NOW)

    def test_two_t4s_halve_the_steps_at_about_the_one_gpu_step_time(self):
        one = plan_for(config(storage="/kaggle/working/r"), self.kaggle(self.T4X2))
        two = plan_for(config(storage="/kaggle/working/r", num_gpus=2), self.kaggle(self.T4X2))
        assert two.steps.total_steps == one.steps.total_steps // 2  # 150 batches per epoch over 2 GPUs
        assert one.sec_per_step < two.sec_per_step <= one.sec_per_step * 1.1
        assert two.rate_status == "estimated" and "data parallel over 2 GPUs" in two.rate_source
        assert two.decision == "ok"

    def test_unused_second_gpu_is_pointed_out(self):
        plan = plan_for(config(storage="/kaggle/working/r"), self.kaggle(self.T4X2))
        assert any("--num-gpus 2" in w for w in plan.warnings)

    def test_more_gpus_than_the_machine_has_stop_before_anything_runs(self):
        plan = plan_for(config(storage="/kaggle/working/r", num_gpus=2), self.kaggle(T4))
        assert plan.decision == "stop"
        assert "--num-gpus 2 needs 2 CUDA GPUs, this machine has 1 (Tesla T4): use --num-gpus 1" in plan.reason
        assert "GPU T4 x2" in plan.reason
        with pytest.raises(UserInputError):
            enforce_plan(plan)
