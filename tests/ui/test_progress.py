"""The cell's progress: one bar redrawn in place from trainer events, not a wall of lines."""

from __future__ import annotations

import io

from anima_lora_flow.trainer.events import Event
from anima_lora_flow.ui.progress import TrainingProgress, format_duration
from anima_lora_flow.ui.summary import summary_text
from anima_lora_flow.config import TrainingConfig


def test_a_run_of_events_draws_one_bar():
    out = io.StringIO()
    progress = TrainingProgress(file=out, session_left=lambda: 3600.0, echo_checkpoints=False)
    progress(Event("plan", {"total_steps": 200, "start_step": 0}))
    for step in range(1, 201):
        progress(Event("step", {"step": step, "total": 200, "loss": 0.1, "sec_per_step": 0.5}))
    progress(Event("checkpoint", {"kind": "state", "step": 200, "path": "/x"}))
    progress(Event("done", {"lora": "/x.safetensors"}))
    text = out.getvalue()
    assert "200/200" in text and "loss 0.1000" in text and "session left 1h00m" in text
    assert text.count("\n") <= 2  # redrawn with carriage returns; closed once


def test_postfix_eta():
    progress = TrainingProgress(file=io.StringIO())
    progress(Event("plan", {"total_steps": 100}))
    assert "ETA 0m50s" in progress.postfix(Event("step", {"step": 50, "total": 100, "sec_per_step": 1.0}))
    assert format_duration(5400) == "1h30m" and format_duration(None) == "?"


def test_summary_names_the_lora_and_its_size():
    cfg = TrainingConfig(dataset="d", project_name="p")
    text = summary_text(cfg, {"outcome": "completed", "steps_done": 10, "total_steps": 10, "sec_per_step": 0.5,
                              "final_lora": "/runs/p/checkpoints/p.safetensors", "lora_bytes": 57_000_000})
    assert "LoRA: /runs/p/checkpoints/p.safetensors (57.0 MB)" in text
    stopped = summary_text(cfg, {"outcome": "stopped", "steps_done": 4, "total_steps": 10})
    assert "run the same command again" in stopped
