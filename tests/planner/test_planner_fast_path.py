"""The fast path per GPU: checkpointing, compile mode and batch chosen to fit, explained, and overridable."""

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.core.gpus import find_spec
from anima_lora_flow.core.step_model import USABLE_SHARE, predict_peak_gib, step_seconds
from anima_lora_flow.effective import Machine, derive
from anima_lora_flow.planner.gpus import named_gpu
from anima_lora_flow.planner.plan import make_plan
from anima_lora_flow.platforms.detect import detect_platform
from anima_lora_flow.trainer.native import NativeBackend
from anima_lora_flow.trainer.sdscripts.backend import SdScriptsBackend

SEED_DATA = {(768, 768): 30 * 5}  # the seed's 30 images x 5 repeats
NOW = 1_700_000_000.0


def effective(gpu: str | None, data=SEED_DATA, backend=NativeBackend, **kw):
    cfg = TrainingConfig(dataset="/d", **kw)
    return derive(cfg, data, Machine.from_gpu(named_gpu(gpu) if gpu else None), backend.numbers)


def fits(eff, gpu: str, **kw) -> bool:
    precision = kw.get("precision", eff.precision)
    peak = predict_peak_gib(768, eff.batch_size, 20, eff.gradient_checkpointing, precision, eff.compile_mode)
    return peak <= named_gpu(gpu).memory_gib * USABLE_SHARE


class TestChoicesPerGpu:
    def test_t4_drops_checkpointing_and_compiles_without_graphs_in_fp16(self):
        eff = effective("T4")
        assert eff.precision == "fp16" and not eff.gradient_checkpointing and fits(eff, "T4")
        assert eff.compile_mode in ("blocks", "model")  # compute-bound: fusion helps, graphs cannot capture the scaler
        reasons = "\n".join(eff.fast_path_reasons)
        assert "checkpointing off" in reasons and "fits T4" in reasons and "loss scaler" in reasons

    def test_l4_and_a100_compile_without_checkpointing(self):
        for gpu in ("L4", "A100"):
            eff = effective(gpu)
            assert not eff.gradient_checkpointing and eff.compile_mode != "none" and fits(eff, gpu)

    def test_h100_takes_the_measured_fastest_setting(self):
        # issue 22: 87.9 ms without checkpointing, whole model compiled and captured as CUDA graphs.
        eff = effective("H100")
        assert (eff.gradient_checkpointing, eff.compile_mode, eff.batch_size) == (False, "cuda-graphs", 1)
        assert any("~88 ms/step" in r for r in eff.fast_path_reasons)

    def test_a_short_run_does_not_pay_for_compiling(self):
        eff = effective("H100", data={(768, 768): 5}, max_train_epochs=1)  # 5 steps: 120 s of compiling saves < 3 s
        assert eff.compile_mode == "none"
        assert any("would not pay back" in r for r in eff.fast_path_reasons)

    def test_checkpointing_stays_on_where_memory_needs_it(self):
        # 1024 px without checkpointing predicts ~16 GiB: more than a T4's 14 usable GiB.
        eff = effective("T4", resolution=1024)
        assert eff.gradient_checkpointing
        assert any("would not fit T4" in r for r in eff.fast_path_reasons)

    def test_old_gpu_stays_eager(self):
        eff = effective("P100")
        assert eff.compile_mode == "none" and any("sm_70" in r for r in eff.fast_path_reasons)

    def test_cpu_is_eager(self):
        eff = effective(None)
        assert (eff.compile_mode, eff.gradient_checkpointing, eff.batch_size) == ("none", False, 1)
        assert any("no GPU" in r for r in eff.fast_path_reasons)


class TestAutoBatch:
    def test_largest_batch_that_fits_per_gpu(self):
        sizes = {}
        for gpu in ("T4", "L4", "A100", "H100"):
            eff = effective(gpu, batch_size=0)
            assert fits(eff, gpu)
            sizes[gpu] = eff.batch_size
            b, gc, mode = eff.batch_size, eff.gradient_checkpointing, eff.compile_mode
            more = predict_peak_gib(768, b + 1, 20, gc, eff.precision, mode)
            peak = find_spec(gpu).peak_tflops
            per_image = [step_seconds(peak, 768, n, gc, mode) / n for n in (b, b + 1)]
            # The next batch does not fit, or would not make an image faster.
            assert more > named_gpu(gpu).memory_gib * USABLE_SHARE or per_image[1] >= per_image[0] * 0.98
        assert sizes["T4"] <= sizes["L4"] <= sizes["A100"] <= sizes["H100"] and sizes["H100"] > 1
        assert any("batch" in r and "auto" in r for r in effective("H100", batch_size=0).fast_path_reasons)

    def test_auto_batch_is_deterministic_and_sets_the_steps(self):
        one, two = effective("A100", batch_size=0), effective("A100", batch_size=0)
        assert one.batch_size == two.batch_size
        assert one.steps.steps_per_epoch == -(-150 // one.batch_size)

    def test_auto_batch_never_exceeds_the_biggest_bucket(self):
        assert effective("H200", data={(768, 768): 3}, batch_size=0).batch_size <= 3

    def test_sd_scripts_keeps_the_seed_settings_under_auto(self):
        eff = effective("H100", backend=SdScriptsBackend, batch_size=0)
        assert (eff.gradient_checkpointing, eff.compile_mode, eff.batch_size) == (True, "none", 1)
        assert all("sd-scripts" in r for r in eff.fast_path_reasons)


class TestOverrides:
    @pytest.mark.parametrize("gpu", ["T4", "L4", "A100", "H100", None])
    def test_user_settings_win(self, gpu):
        eff = effective(gpu, gradient_checkpointing=True, compile_mode="blocks", batch_size=2)
        assert (eff.gradient_checkpointing, eff.compile_mode, eff.batch_size) == (True, "blocks", 2)
        assert sum("your setting" in r for r in eff.fast_path_reasons) == 3

    def test_compile_blocks_switch_asks_for_blocks(self):
        assert effective("H100", compile_blocks=True).compile_mode == "blocks"

    def test_an_explicit_mode_is_kept_without_a_gpu(self):
        # The trainer refuses cuda-graphs without CUDA with its own message (trainer/compiled.py): not changed here.
        eff = effective(None, compile_mode="cuda-graphs")
        assert eff.compile_mode == "cuda-graphs" and "compile cuda-graphs: your setting" in eff.fast_path_reasons


class TestPlanShowsWhy:
    def test_plan_text_has_one_line_per_choice(self):
        platform = detect_platform({}, gpu=lambda: None, now=NOW)
        plan = make_plan(TrainingConfig(dataset="/d", batch_size=0), SEED_DATA, platform, gpu="A100", now=NOW, cwd="/tmp")
        text = plan.to_text()
        assert "Why these settings:" in text
        lines = text.split("Why these settings:")[1].splitlines()[1:4]
        assert [line.split(":")[0].strip("- ").split()[0] for line in lines] == ["gradient", "compile", "batch"]
        assert f"batch {plan.batch_size}" in text and plan.steps.steps_per_epoch == -(-150 // plan.batch_size)
        assert "## Why these settings" in plan.to_markdown()

    def test_planned_rate_follows_the_chosen_mode(self):
        platform = detect_platform({}, gpu=lambda: None, now=NOW)
        fast = make_plan(TrainingConfig(dataset="/d"), SEED_DATA, platform, gpu="H100", now=NOW, cwd="/tmp")
        eager = make_plan(TrainingConfig(dataset="/d", gradient_checkpointing=True, compile_mode="none"), SEED_DATA, platform,
                          gpu="H100", now=NOW, cwd="/tmp")
        assert fast.sec_per_step == pytest.approx(0.0879) and fast.rate_status == "measured"
        assert eager.sec_per_step == pytest.approx(0.688)
        assert fast.memory.predicted_gib > eager.memory.predicted_gib  # no checkpointing, a graph pool
