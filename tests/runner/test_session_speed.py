"""The session's speed is its average over the steps trained, not the last interval's, and leaves the warm-up out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.ui.summary import summary_markdown, summary_text


def _session(tmp_path: Path, events: list[dict]):
    cfg = TrainingConfig(dataset="d", project_name="p", storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))
    lora = tmp_path / "p.safetensors"
    lines = "".join(json.dumps(e) + "\n" for e in [*events, {"event": "done", "lora": str(lora), "steps": 24}])
    events_path = tmp_path / "work" / "runs" / "r1" / "events.jsonl"
    script = f"open({str(lora)!r}, 'wb').write(b'lora'); open({str(events_path)!r}, 'a').write({lines!r})"
    result = run_training_session(
        cfg, items=[], dataset_fingerprint="d", models_dir=None, store=RunStore(resolve_location(cfg.storage), "p"),
        work_dir=Path(cfg.work_dir), run_id="r1", command=[sys.executable, "-c", script], log=lambda m: None,
    )
    return cfg, result.to_dict()


def test_the_speed_is_the_average_after_the_warm_up_interval(tmp_path):
    cfg, result = _session(tmp_path, [
        {"event": "plan", "total_steps": 24, "start_step": 0},
        {"event": "step", "step": 10, "total": 24, "sec_per_step": 5.0},  # holds the first step's compile
        {"event": "step", "step": 20, "total": 24, "sec_per_step": 1.0},
        {"event": "step", "step": 24, "total": 24, "sec_per_step": 2.0},  # the last interval alone
    ])
    assert result["outcome"] == "completed"
    assert result["sec_per_step"] == pytest.approx((10 * 1.0 + 4 * 2.0) / 14)
    assert (result["timed_steps"], result["warmup_steps"]) == (14, 10)
    assert "24/24 steps at 1.29 s/step (average of 14 steps after 10 warm-up steps)" in summary_text(cfg, result)
    assert "| speed | 1.29 s/step (average of 14 steps after 10 warm-up steps) |" in summary_markdown(cfg, result, "/r")


def test_a_resumed_session_with_one_interval_says_the_warm_up_is_included(tmp_path):
    _, result = _session(tmp_path, [
        {"event": "plan", "total_steps": 24, "start_step": 20},
        {"event": "step", "step": 24, "total": 24, "sec_per_step": 3.0},
    ])
    assert result["sec_per_step"] == pytest.approx(3.0)
    assert (result["timed_steps"], result["warmup_steps"]) == (4, 0)
    assert "at 3.00 s/step (average of 4 steps, warm-up included)" in summary_text(
        TrainingConfig(dataset="d", project_name="p"), result)
