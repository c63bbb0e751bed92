"""effective.py: the one derivation of a run's numbers, and both backends (and kohya's formulas) agreeing on it."""

from __future__ import annotations

import math

import pytest
import torch

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.effective import Machine, derive, resolve_optimizer, resolve_precision, warmup_steps
from anima_lora_flow.trainer.native import NativeBackend
from anima_lora_flow.trainer.sdscripts.backend import SdScriptsBackend
from anima_lora_flow.planner.plan import make_plan
from anima_lora_flow.platforms.detect import detect_platform
from anima_lora_flow.core.gpu import GpuInfo
from anima_lora_flow.trainer.sdscripts.render import render_dataset_toml, render_training_toml

NATIVE = NativeBackend.numbers
SD_SCRIPTS = SdScriptsBackend.numbers

T4 = GpuInfo(name="Tesla T4", memory_gib=14.7, capability=(7, 5))
A100 = GpuInfo(name="NVIDIA A100-SXM4-40GB", memory_gib=39.4, capability=(8, 0))
# The seed's form: repeats 5, images spread over three buckets (a partial last batch in each at batch 4).
SEED_SAMPLES = {(768, 768): 30 * 5, (640, 896): 11 * 5, (896, 640): 3 * 5}
PATHS = dict(dit="/m/dit.safetensors", qwen3="/m/qwen.safetensors", vae="/m/vae.safetensors", output_dir="/o", run_date="2026-01-01")


def _config(**overrides) -> TrainingConfig:
    return TrainingConfig(dataset="/data", **overrides)


class TestRules:
    def test_warmup_is_at_most_a_tenth_of_the_run(self):
        assert warmup_steps(100, 6, "cosine") == 1
        assert warmup_steps(100, 500, "cosine") == 50
        assert warmup_steps(100, 5000, "cosine_with_restarts") == 100
        assert warmup_steps(0, 500, "linear") == 0
        assert warmup_steps(100, 5000, "constant") == 0  # sd-scripts refuses a warm-up with constant

    def test_precision_is_never_auto(self):
        assert resolve_precision("auto", Machine()) == "no"
        assert resolve_precision("bf16", Machine()) == "no"  # no GPU: fp32
        assert resolve_precision("auto", Machine.from_gpu(T4)) == "fp16"  # a T4 emulates bf16
        assert resolve_precision("auto", Machine.from_gpu(A100)) == "bf16"
        assert resolve_precision("bf16", Machine.from_gpu(T4)) == "bf16"

    def test_auto_optimizer_per_backend(self):
        assert resolve_optimizer("auto", NATIVE) == "adamw"
        assert resolve_optimizer("auto", SD_SCRIPTS) == "adamw8bit"
        assert resolve_optimizer("adafactor", NATIVE) == "adafactor"
        assert derive(_config(), SEED_SAMPLES, Machine.from_gpu(A100), NATIVE).optimizer_class == "torch.optim.AdamW(fused)"
        assert derive(_config(), SEED_SAMPLES, Machine(), NATIVE).optimizer_class == "torch.optim.AdamW(foreach)"

    def test_native_scheduler_counts_optimizer_steps_on_any_number_of_processes(self):
        one = derive(_config(gradient_accumulation_steps=2), SEED_SAMPLES, Machine(processes=1), NATIVE)
        two = derive(_config(num_gpus=2), SEED_SAMPLES, Machine(processes=2), NATIVE)
        assert one.steps == two.steps and one.micro_batches_per_step == two.micro_batches_per_step == 2
        assert (two.scheduler_training_steps, two.scheduler_warmup_steps, two.scheduler_steps_per_optimizer_step) == (
            two.total_steps, two.warmup_steps, 1)  # fmt: skip

    def test_rope_covers_the_largest_bucket(self):
        assert derive(_config(), SEED_SAMPLES, Machine(), NATIVE).rope_patches == 2304 // 16  # 768 px: up to 256 x 2304
        assert derive(_config(resolution=2048), SEED_SAMPLES, Machine(), NATIVE).rope_patches == 4096 // 16
        assert derive(_config(resolution=2048, max_bucket_reso=8192), SEED_SAMPLES, Machine(), NATIVE).rope_patches == 8192 // 16

    def test_the_planner_reads_the_same_numbers(self):
        platform = detect_platform({"COLAB_RELEASE_TAG": "r"}, uptime_s=0.0, gpu=T4, now=1.7e9)
        plan = make_plan(_config(), SEED_SAMPLES, platform, now=1.7e9, cwd="/content")
        eff = derive(_config(), SEED_SAMPLES, Machine.from_gpu(T4), NATIVE)
        assert plan.steps == eff.steps and plan.precision == eff.precision == "fp16"


# --- sd-scripts 48d368fa's own formulas (the checkout is not needed here) ------------------------------


def kohya_dataloader_length(samples_per_bucket: dict, batch_size: int) -> int:
    # library/train_util.py line 1079: batch_count = int(math.ceil(len(bucket) / self.batch_size)) per bucket;
    # the DataLoader runs with batch_size=1 over those batches (train_network.py line 781).
    return sum(int(math.ceil(n / batch_size)) for n in samples_per_bucket.values())


def kohya_max_train_steps(max_train_epochs: int, len_dataloader: int, num_processes: int, grad_accum: int) -> int:
    # train_network.py lines 800-802: max_train_epochs * math.ceil(len(train_dataloader) / num_processes / grad_accum)
    return max_train_epochs * math.ceil(len_dataloader / num_processes / grad_accum)


def kohya_scheduler_counts(max_train_steps: int, lr_warmup_steps: int, num_processes: int) -> tuple[int, int]:
    # library/train_util.py lines 5274-5277: num_training_steps = max_train_steps * num_processes; an int
    # lr_warmup_steps is used as it is.
    return max_train_steps * num_processes, lr_warmup_steps


@pytest.mark.parametrize("overrides", [{}, {"batch_size": 4, "gradient_accumulation_steps": 3}, {"lr_scheduler": "linear"},
                                       {"max_train_epochs": 2, "optimizer": "adamw8bit"}])  # fmt: skip
def test_both_backends_and_kohya_agree_on_the_seed_defaults(overrides):
    cfg = _config(**overrides)
    machine = Machine.from_gpu(T4)  # the seed's Colab GPU
    native = derive(cfg, SEED_SAMPLES, machine, NATIVE)
    sd = derive(cfg, SEED_SAMPLES, machine, SD_SCRIPTS)
    toml = render_training_toml(cfg, mixed_precision=sd.precision, total_steps=sd.total_steps, **PATHS)
    dataset = render_dataset_toml(cfg, image_dir="/d")

    # What sd-scripts computes from the TOML (one process: preflight refuses sd-scripts on several GPUs).
    assert dataset["datasets"][0]["subsets"][0]["num_repeats"] == cfg.repeats
    length = kohya_dataloader_length(SEED_SAMPLES, toml["train_batch_size"])
    kohya_total = kohya_max_train_steps(toml["max_train_epochs"], length, 1, toml["gradient_accumulation_steps"])
    kohya_sched_total, kohya_warmup = kohya_scheduler_counts(kohya_total, toml["lr_warmup_steps"], 1)

    assert native.total_steps == sd.total_steps == kohya_total
    assert native.warmup_steps == sd.warmup_steps == toml["lr_warmup_steps"] == kohya_warmup
    assert native.scheduler_training_steps == sd.scheduler_training_steps == kohya_sched_total
    assert native.scheduler_warmup_steps == sd.scheduler_warmup_steps == kohya_warmup
    assert native.precision == sd.precision == toml["mixed_precision"] == "fp16"
    assert native.lr_scheduler == toml["lr_scheduler"] and toml["lr_scheduler_num_cycles"] == cfg.lr_scheduler_num_cycles
    # Checkpointing is the fast path's choice per backend: sd-scripts keeps the seed's, the native one may drop it.
    assert sd.gradient_checkpointing == toml["gradient_checkpointing"] is True
    if cfg.optimizer == "auto":  # by design: fused AdamW natively, the seed's AdamW8bit in sd-scripts
        assert (native.optimizer, sd.optimizer, toml["optimizer_type"]) == ("adamw", "adamw8bit", "AdamW8bit")
    else:
        assert native.optimizer == sd.optimizer and toml["optimizer_type"].lower() == cfg.optimizer


def test_the_native_schedule_is_the_one_kohya_builds():
    """Same counts, same curve: diffusers' scheduler (native) against transformers' (what sd-scripts calls)."""
    from transformers import get_scheduler as kohya_get_scheduler

    from anima_lora_flow.trainer.loop import build_scheduler

    cfg = _config(learning_rate=1e-3)
    eff = derive(cfg, {(768, 768): 30}, Machine(), NATIVE)  # 300 steps: warm-up 30
    assert eff.warmup_steps == 30

    def opt():
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)

    ours = build_scheduler(opt(), cfg, eff)
    kohya_opt = opt()
    sched_total, warmup = kohya_scheduler_counts(eff.total_steps, eff.warmup_steps, 1)
    theirs = kohya_get_scheduler(cfg.lr_scheduler, kohya_opt, num_warmup_steps=warmup, num_training_steps=sched_total,
                                 scheduler_specific_kwargs={"num_cycles": cfg.lr_scheduler_num_cycles})  # fmt: skip
    for _ in range(eff.total_steps):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], rel=1e-12, abs=1e-15)
        ours.optimizer.step()
        kohya_opt.step()
        ours.step()
        theirs.step()
