"""The summaries: the dry run's shows the backend's own files from the result key the backend names
(preview_key); a run's shows rounded figures, a failure's reason and a stop's resume advice."""

from __future__ import annotations

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.trainer.registry import backend_for
from anima_lora_flow.ui.summary import loss_text, resume_advice, seconds_text, summary_markdown, summary_text


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


def _trained(**extra) -> dict:
    return {"outcome": "completed", "steps_done": 24, "total_steps": 24, "start_step": 0, **extra}


def test_the_summary_rounds_its_figures():
    cfg = TrainingConfig(dataset="d", project_name="p")
    result = _trained(last_loss=0.123456789, sec_per_step=0.0512345678, timed_steps=14, warmup_steps=10,
                      elapsed_s=3725.4)
    lines = summary_markdown(cfg, result, "/r").splitlines()
    assert "| last loss | 0.1235 |" in lines
    assert "| speed | 0.0512 s/step (average of 14 steps after 10 warm-up steps) |" in lines
    assert "| time | 1h02m |" in lines
    assert "3725" not in "\n".join(lines) and "0.12345" not in "\n".join(lines)
    assert "at 0.0512 s/step" in summary_text(cfg, result) and "time: 1h02m" in summary_text(cfg, result)


@pytest.mark.parametrize(("sec", "shown"), [(3.0, "3.00"), (1.2874, "1.29"), (12.46, "12.5"), (250.4, "250"),
                                            (0.000123456, "0.000123")])
def test_speeds_keep_three_significant_digits(sec, shown):
    assert seconds_text(sec) == shown


@pytest.mark.parametrize(("loss", "shown"), [(None, "-"), (1.0, "1"), (0.0123456, "0.01235"), (2.5e-6, "2.5e-06")])
def test_losses_keep_four_significant_digits(loss, shown):
    assert loss_text(loss) == shown


def test_a_failed_run_s_summary_gives_the_reason_whole():
    import html
    import re

    from markdown_it import MarkdownIt  # what renders markdown for rich, a dependency of Prefect

    cfg = TrainingConfig(dataset="d", project_name="p")
    reason = "training failed at step 10: a | b *c* my_lora_v2 [x](y) <tag>\n# 1. second line (full log: /w/trainer.log)"
    result = {"outcome": "failed", "steps_done": 10, "total_steps": 24, "reason": reason, "unsynced_steps": 10}
    text = summary_markdown(cfg, result, "/r")
    assert text.startswith("# p: failed")
    rendered = MarkdownIt().render(text[text.index("The run failed at step 10:"):])
    quote = re.search(r"<blockquote>(.*)</blockquote>", rendered, re.S).group(1)
    assert "<em>" not in quote and "<a " not in quote and "<h1>" not in quote and "<ol>" not in quote
    assert html.unescape(re.sub(r"<[^>]+>", "", quote)).strip() == reason  # every character as written
    # The session is over: the steps after the newest stored state are lost, not still uploading.
    assert "The newest state in storage is 10 steps behind" in text and "keep this session alive" not in text


def test_a_stopped_run_s_summary_gives_the_resume_advice():
    cfg = TrainingConfig(dataset="d", project_name="p")
    result = {"outcome": "stopped", "steps_done": 7, "total_steps": 24, "stop_reason": "deadline"}
    assert resume_advice(result) == ("saved a resumable state at step 7 and stopped (deadline); run the same "
                                     "command or cell again in a new session to continue")
    assert summary_markdown(cfg, result, "/r").endswith("\n\nSaved a resumable state at step 7 and stopped (deadline); "
                                                       "run the same command or cell again in a new session to continue.")
