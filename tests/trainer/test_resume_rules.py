"""The trainer honours what a resume may change (a new learning rate reaches the optimizer) and records,
and checks, the base model it trains on (block count and width as loaded)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from safetensors import safe_open

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.run import TrainJob, run_training
from anima_lora_flow.trainer.state import PROGRESS_FILE
from anima_lora_flow.trainer.tiny import build_tiny_model


def _job(items, models_dir, tmp_path, config, name, resume=None) -> TrainJob:
    return TrainJob(
        config=config, items=[item.to_json() for item in items], models_dir=str(models_dir),
        work_dir=str(tmp_path / f"work-{Path(models_dir).name}"), output_dir=str(tmp_path / name), resume_state=resume,
        dataset_fingerprint="ds1",
    )


def _lrs(events) -> dict[int, float]:
    return {e.step: e.lr for e in events if e.event == "step"}


def test_a_new_learning_rate_reaches_the_optimizer_on_resume(items, tiny_model, tmp_path, tiny_config, monkeypatch, caplog):
    monkeypatch.setattr("anima_lora_flow.trainer.loop.LOG_EVERY", 1)
    opts = dict(max_train_epochs=2, lr_scheduler="cosine", lr_warmup_steps=0)
    straight = []
    run_training(_job(items, tiny_model, tmp_path, tiny_config(**opts), "straight"), straight.append)

    calls = iter(range(1, 100))
    first = run_training(_job(items, tiny_model, tmp_path, tiny_config(**opts), "split"),
                         stop_requested=lambda: next(calls) >= 2)  # fmt: skip
    assert first.steps == 2
    resumed = []
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.trainer"):
        result = run_training(_job(items, tiny_model, tmp_path, tiny_config(**opts, learning_rate=2e-3), "split", first.state),
                              resumed.append)  # fmt: skip
    assert result.steps == 6
    # Same schedule, same place in it, twice the peak: every later step runs at twice the rate.
    before, after = _lrs(straight), _lrs(resumed)
    assert sorted(after) == [3, 4, 5, 6]
    for step in (3, 4, 5):
        assert after[step] == pytest.approx(2 * before[step], rel=1e-6)
    assert "--learning-rate 0.001 -> 0.002: the learning-rate schedule is re-planned from step 2" in caplog.text
    # The states saved from here on record the new rate: a further resume compares against it.
    saved = json.loads((Path(result.state) / PROGRESS_FILE).read_text())
    assert saved["training_fields"]["learning_rate"] == 2e-3


@pytest.fixture(scope="module")
def deep_and_shallow(tmp_path_factory):
    root = tmp_path_factory.mktemp("depths")
    return build_tiny_model(root / "two-blocks", seed=0, num_layers=2), build_tiny_model(root / "three-blocks", seed=0, num_layers=3)


def test_the_base_model_is_recorded_and_another_depth_trains(items, tmp_path, tiny_config, deep_and_shallow):
    two, three = deep_and_shallow
    for models_dir, blocks in ((two, 2), (three, 3)):
        cfg = tiny_config(max_train_epochs=1, models_dir=str(models_dir))
        result = run_training(_job(items, models_dir, tmp_path, cfg, f"out{blocks}"))
        with safe_open(result.final_lora, "pt") as f:
            meta, keys = f.metadata(), list(f.keys())
        assert meta["ss_base_model_blocks"] == str(blocks) and meta["ss_base_model_hidden_size"] == "32"
        assert meta["ss_sd_model_name"] == str(models_dir)
        assert {k.split(".")[2] for k in keys} == {str(i) for i in range(blocks)}  # every block has its LoRA
        progress = json.loads((Path(result.state) / PROGRESS_FILE).read_text())
        assert progress["base_model"] == {"name": str(models_dir), "dit_sha256": None, "blocks": blocks, "hidden_size": 32}


def test_a_state_of_another_base_is_refused_with_both_names(items, tmp_path, tiny_config, deep_and_shallow):
    two, three = deep_and_shallow
    first = run_training(_job(items, two, tmp_path, tiny_config(models_dir=str(two)), "base"), stop_requested=lambda: True)
    with pytest.raises(UserInputError, match=rf"the base model {two} \(2 blocks, hidden size 32\) -> {three} \(3 blocks, hidden size 32\)"):
        run_training(_job(items, three, tmp_path, tiny_config(models_dir=str(three)), "base", first.state))


def _record(cfg, dataset="ds1", **fields):
    from anima_lora_flow.trainer.state import TrainingProgress

    return TrainingProgress(global_step=7, fingerprint=cfg.fingerprint(dataset), training_fields=cfg.training_fields(),
                            dataset_fingerprint=dataset, **fields)  # fmt: skip


def test_check_resume_applies_the_rules():
    import hashlib

    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.trainer.state import check_resume

    cfg = TrainingConfig(dataset="d")
    saved = _record(cfg)
    more = TrainingConfig(dataset="elsewhere", max_train_epochs=12, storage="gs://b/r")
    assert check_resume(saved, more, more.fingerprint("ds1"), dataset_fingerprint="ds1") == [
        "--max-train-epochs 10 -> 12: the learning-rate schedule is re-planned from step 7"]
    with pytest.raises(UserInputError, match=r"--network-dim 20 -> 8; --resolution 768 -> 1024\)"):
        other = TrainingConfig(dataset="d", network_dim=8, resolution=1024)
        check_resume(saved, other, other.fingerprint("ds1"), dataset_fingerprint="ds1")
    with pytest.raises(UserInputError, match="the dataset's images or captions"):
        check_resume(saved, cfg, cfg.fingerprint("ds2"), dataset_fingerprint="ds2")
    # A setting the state's version did not have is not held against it.
    older = _record(cfg)
    del older.training_fields["caption_dropout"]
    assert check_resume(older, cfg, cfg.fingerprint("ds1"), dataset_fingerprint="ds1") == []
    # A state from before the rules: its fingerprint hashed every recorded setting with the dataset.
    legacy_hash = hashlib.sha256(__import__("json").dumps({"config": cfg.training_fields(), "dataset": "ds1"},
                                                          sort_keys=True).encode()).hexdigest()[:16]  # fmt: skip
    legacy = _record(cfg, dataset="")
    legacy.fingerprint = legacy_hash
    assert check_resume(legacy, cfg, cfg.fingerprint("ds1"), dataset_fingerprint="ds1") == []
    with pytest.raises(UserInputError, match="the dataset's images or captions"):
        check_resume(legacy, cfg, cfg.fingerprint("ds2"), dataset_fingerprint="ds2")


def test_new_optimizer_settings_replace_the_loaded_ones():
    import torch
    from diffusers.optimization import get_scheduler

    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.trainer.state import apply_new_settings

    def built(lr):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr, weight_decay=0.1, betas=(0.9, 0.99))
        return opt, get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=10)

    old_opt, old_sched = built(1e-3)
    for _ in range(4):
        old_opt.step()
        old_sched.step()
    opt, sched = built(1e-3)
    opt.load_state_dict(old_opt.state_dict())
    sched.load_state_dict(old_sched.state_dict())
    at_step_4 = opt.param_groups[0]["lr"]
    cfg = TrainingConfig(dataset="d", learning_rate=3e-3, weight_decay=0.01, betas=(0.8, 0.95))
    apply_new_settings(opt, sched, cfg, {"learning_rate": 1e-3})
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(3 * at_step_4) and sched.get_last_lr() == [group["lr"]]
    assert (group["weight_decay"], group["betas"]) == (0.01, (0.8, 0.95))
    opt.step()
    sched.step()  # the schedule goes on from its place, at three times the old rate
    old_opt.step()
    old_sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(3 * old_opt.param_groups[0]["lr"])


def test_auto_batch_resumes_at_the_states_batch_on_another_gpu(items, tiny_model, tmp_path, tiny_config, monkeypatch):
    """batch_size 0 picks per GPU; a state saved at batch 1 (here: no GPU) resumed where auto would pick 3 goes on at 1."""
    from anima_lora_flow.effective import Machine
    from anima_lora_flow.planner.gpus import named_gpu

    opts = dict(batch_size=0, compile_mode="none", mixed_precision="no", max_train_epochs=2)
    calls = iter(range(1, 100))
    first = run_training(_job(items, tiny_model, tmp_path, tiny_config(**opts), "auto"), stop_requested=lambda: next(calls) >= 2)
    assert first.steps == 2  # 3 images at batch 1: 3 steps an epoch
    # The same config on an L4 would pick a batch of 3 for these tiny buckets: another epoch, another data order.
    l4 = Machine.from_gpu(named_gpu("L4"))
    monkeypatch.setattr(Machine, "detect", classmethod(lambda cls, processes=1: l4))
    from anima_lora_flow.effective import derive
    from anima_lora_flow.trainer.native import NativeBackend
    from anima_lora_flow.config import TrainingConfig

    assert derive(TrainingConfig(**tiny_config(**opts)), {(256, 256): 3}, l4, NativeBackend.numbers).batch_size == 3
    resumed = run_training(_job(items, tiny_model, tmp_path, tiny_config(**opts), "auto", first.state))
    assert resumed.steps == 6  # went on at batch 1 to the end of epoch 2
