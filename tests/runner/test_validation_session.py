"""A real session (the demo's tiny model in a trainer subprocess) with held-out images: the validation
loss reaches the session result, the summary names the LoRA to use, and the LoRA in storage records it."""

from __future__ import annotations

from pathlib import Path

import pytest

from safetensors import safe_open

from anima_lora_flow.runner.prepare import dataset_report
from anima_lora_flow.demo import demo_config
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.ui.summary import summary_text


@pytest.mark.slow  # a whole demo session; tests/trainer/test_validation.py covers the numbers in CI
def test_a_session_reports_the_validation_loss_and_the_best_epoch(tmp_path):
    cfg = demo_config(tmp_path, epochs=2).model_copy(update={"validation_split": 0.25, "sample_every_n_epochs": 0})
    report = dataset_report(cfg)  # the split happens where the flow makes its report
    assert report.held_out
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)
    result = run_training_session(
        cfg, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=Path(cfg.models_dir),
        store=store, work_dir=Path(cfg.work_dir), run_id="val", log=lambda line: None, report=report,
    )
    assert result.outcome == "completed"
    assert [step for step, _ in result.validation] == [result.total_steps // 2, result.total_steps]
    best = result.best_epoch
    images = len(report.held_out)
    assert best["set"] == f"held-out, {images} images" and best["epoch"] in (1, 2)
    assert best["file"] == ("demo.safetensors" if best["epoch"] == 2 else "demo-000001.safetensors")
    text = summary_text(cfg, result.to_dict())
    assert f"use {best['file']}: lowest validation loss {best['loss']:.4f} at epoch {best['epoch']} (held-out, {images} images)" in text
    with safe_open(str(Path(store.path("checkpoints", "demo.safetensors"))), "pt") as f:
        meta = f.metadata()
    assert float(meta["anima_validation_loss"]) == float(f"{result.validation[-1][1]:.6g}")
    assert store.best_epoch()["file"] == best["file"]
