"""The cell's progress: one bar redrawn in place from trainer events, not a wall of lines."""

from __future__ import annotations

import io

from anima_lora_flow.trainer.events import Checkpoint, Done, Log, Plan, Step
from anima_lora_flow.core.formatting import format_duration
from anima_lora_flow.ui.progress import ConsoleProgress
from anima_lora_flow.ui.summary import summary_text
from anima_lora_flow.config import TrainingConfig


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_run_of_events_draws_one_bar():
    out = _Terminal()
    progress = ConsoleProgress(file=out, session_left=lambda: 3600.0, echo_checkpoints=False)
    progress(Plan(total_steps=200, start_step=0))
    for step in range(1, 201):
        progress(Step(step=step, total_steps=200, loss=0.1, sec_per_step=0.5))
    progress(Checkpoint(kind="state", step=200, path="/x"))
    progress(Done(lora="/x.safetensors"))
    text = out.getvalue()
    assert "200/200" in text and "loss 0.1000" in text and "session left 1h00m" in text
    assert text.count("\n") <= 2  # redrawn with carriage returns; closed once


def test_postfix_eta():
    progress = ConsoleProgress(file=io.StringIO())
    progress(Plan(total_steps=100))
    assert "ETA 0m50s" in progress.postfix(Step(step=50, total_steps=100, sec_per_step=1.0))
    assert format_duration(5400) == "1h30m" and format_duration(None) == "?"


def test_summary_names_the_lora_and_its_size():
    cfg = TrainingConfig(dataset="d", project_name="p")
    text = summary_text(cfg, {"outcome": "completed", "steps_done": 10, "total_steps": 10, "sec_per_step": 0.5,
                              "final_lora": "/runs/p/checkpoints/p.safetensors", "lora_bytes": 57_000_000})
    assert "LoRA: /runs/p/checkpoints/p.safetensors (57.0 MB)" in text
    stopped = summary_text(cfg, {"outcome": "stopped", "steps_done": 4, "total_steps": 10})
    assert "run the same command again" in stopped


# What the demo's trainer sends: step events every 10 steps, a log line, checkpoints at the epoch ends.
DEMO_EVENTS = [
    Plan(total_steps=24, start_step=0),
    Log(message="caches: 0 latents reused, 6 encoded"),
    Step(step=10, total_steps=24, loss=0.5, sec_per_step=0.2),
    Checkpoint(kind="state", step=12, path="/s"),
    Step(step=20, total_steps=24, loss=0.4, sec_per_step=0.3),
    Step(step=24, total_steps=24, loss=0.3, sec_per_step=0.25),
    Done(lora="/x.safetensors"),
]


def test_a_log_file_gets_each_step_once_as_plain_lines():
    out = io.StringIO()  # no tty: a log file, a pipe, Kaggle's saved output
    progress = ConsoleProgress(file=out, echo_checkpoints=False, every_s=0)
    for event in DEMO_EVENTS:
        progress(event)
    text = out.getvalue()
    assert "\r" not in text
    for step in (0, 10, 20, 24):
        assert text.count(f" {step}/24") == 1, (step, text)
    assert text.splitlines() == [
        "training: step 0/24 (0%)",
        "caches: 0 latents reused, 6 encoded",
        "training: step 10/24 (41%), loss 0.5000, 0.20 s/step, ETA 0m02s",
        "training: step 20/24 (83%), loss 0.4000, 0.30 s/step, ETA 0m01s",
        "training: step 24/24 (100%), loss 0.3000, 0.25 s/step, ETA 0m00s",
    ]


def test_plain_lines_are_throttled_but_the_last_step_is_always_shown():
    out = io.StringIO()
    progress = ConsoleProgress(file=out, every_s=3600)
    for event in DEMO_EVENTS:
        progress(event)
    steps = [line for line in out.getvalue().splitlines() if line.startswith("training: step")]
    assert [line.split()[2] for line in steps] == ["0/24", "10/24", "24/24"]


def test_a_terminal_redraws_each_step_with_its_own_numbers():
    out = _Terminal()
    progress = ConsoleProgress(file=out, echo_checkpoints=False, redraw_s=0)
    for event in DEMO_EVENTS:
        progress(event)
    frames = [f for f in out.getvalue().replace("\n", "\r").split("\r") if "/24" in f]
    assert frames and all("\n" not in f for f in frames)
    losses = {10: "0.5000", 20: "0.4000", 24: "0.3000"}
    for frame in frames:
        step = int(frame.split("/24")[0].rsplit(" ", 1)[1])
        if step:
            assert f"/24, loss {losses[step]}" in frame, frame  # never a step shown with the previous step's loss
