"""The dry run's summary shows the backend's own files from the result key the backend names (preview_key)."""

from __future__ import annotations

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.trainer.registry import backend_for
from anima_lora_flow.ui.summary import summary_text


def _dry_run(trainer: str, **extra) -> tuple[TrainingConfig, dict]:
    cfg = TrainingConfig(dataset="d", project_name="p", trainer=trainer)
    return cfg, {"outcome": "dry-run", "trainable_images": 3, "plan": {"steps": {"total_steps": 12}}, **extra}


def test_a_backend_s_files_are_listed_from_its_preview_key():
    key = backend_for("sd-scripts").preview_key
    cfg, result = _dry_run("sd-scripts", **{key: {
        "training_toml": "/r/configs/x/training.toml", "dataset_toml": "/r/configs/x/dataset.toml",
        "command": "accelerate launch train.py", "models_note": ""}})
    assert summary_text(cfg, result).splitlines() == [
        "p: dry run, 3 images, 12 steps; nothing trained",
        "training TOML: /r/configs/x/training.toml",
        "dataset TOML:  /r/configs/x/dataset.toml",
        "command:",
        "accelerate launch train.py",
    ]


def test_a_backend_without_files_shows_only_the_plan_line():
    assert backend_for("native").preview_key is None
    # Another backend's files in the result are not this run's: native shows none.
    cfg, result = _dry_run("native", sd_scripts={"training_toml": "/t", "dataset_toml": "/d", "command": "c"})
    assert summary_text(cfg, result) == "p: dry run, 3 images, 12 steps; nothing trained"
