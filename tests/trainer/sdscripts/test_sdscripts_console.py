"""The console parser against sd-scripts output written from its real formats (fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anima_lora_flow.trainer.sdscripts.console import ConsoleParser, is_progress
from anima_lora_flow.trainer.sdscripts.resume import fix_train_state, read_train_state, resume_parser

FIXTURES = Path(__file__).parent / "fixtures"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def _feed(parser: ConsoleParser, text: str, size: int | None) -> list:
    if size is None:
        return parser.feed(text)
    return [e for i in range(0, len(text), size) for e in parser.feed(text[i : i + size])]


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_fresh_run_events(chunk):
    parser = ConsoleParser()
    events = _feed(parser, _read("fresh_run.log"), chunk)
    plans = [e for e in events if e.event == "plan"]
    assert len(plans) == 1
    assert plans[0].total_steps == 8 and plans[0].epochs == 2 and plans[0].batches_per_epoch == 4
    steps = [e for e in events if e.event == "step"]
    assert [e.step for e in steps] == list(range(1, 9))  # one event per step, not per redraw
    assert all(e.total_steps == 8 for e in steps)
    assert [e.epoch for e in steps] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert steps[0].loss is None and steps[0].sec_per_step == pytest.approx(2.01)
    assert steps[3].loss == pytest.approx(0.0975) and steps[3].sec_per_step == pytest.approx(0.8)  # 1.25 it/s
    assert steps[-1].loss == pytest.approx(0.0902)
    checkpoints = [(e.kind, e.path, e.step, e.epoch, e.final, e.reported_step) for e in events if e.event == "checkpoint"]
    assert checkpoints == [
        ("lora", "/out/my_lora-000001.safetensors", 4, 1, False, None),
        ("state", "/out/my_lora-000001-state", 4, 1, False, 4),
        ("state", "/out/my_lora-state", 8, 2, False, 8),
        ("lora", "/out/my_lora.safetensors", 8, 2, True, None),
    ]
    assert parser.final_lora == "/out/my_lora.safetensors"
    logs = [e.message for e in events if e.event == "log"]
    assert "epoch 1/2" in logs and "model saved." in logs and "running training / 学習開始" in logs


@pytest.mark.parametrize("chunk", [None, 5])
def test_resumed_run_reports_absolute_steps(chunk):
    """sd-scripts restarts its bar (6 of "10") and its step counter after a resume; we do not."""
    parser = ConsoleParser()  # learns the resume step from "load train state" / "skipping N steps"
    events = _feed(parser, _read("resumed_run.log"), chunk)
    assert [e.total_steps for e in events if e.event == "plan"] == [12]
    steps = [e for e in events if e.event == "step"]
    assert [e.step for e in steps] == [7, 8, 9, 10, 11, 12]
    assert all(e.total_steps == 12 for e in steps)
    step_lora, step_state = [e for e in events if e.event == "checkpoint"][:2]
    assert step_lora.path.endswith("-step00000004.safetensors")
    assert (step_lora.step, step_lora.reported_step) == (8, 4)
    assert (step_state.step, step_state.reported_step, step_state.epoch) == (8, 4, 2)
    assert parser.step == 12


def test_resume_step_given_up_front():
    parser = ConsoleParser(initial_step=6)
    events = parser.feed("  total optimization steps / 学習ステップ数: 12\n\rsteps:  10%|█         | 1/10 [00:02<00:18,  2.00s/it, avr_loss=0.1]")
    assert [e.step for e in events if e.event == "step"] == [7]


def test_resume_without_skipping_restarts_the_epoch():
    """With gradient accumulation (no skip_until_initial_step) sd-scripts redoes the interrupted epoch."""
    parser = ConsoleParser(initial_step=6, skip_until_initial_step=False)
    text = (
        "  num batches per epoch / 1epochのバッチ数: 8\n"
        "  gradient accumulation steps / 勾配を合計するステップ数 = 2\n"
        "  total optimization steps / 学習ステップ数: 12\n"
        "\rsteps:   0%|          | 0/12 [00:00<?, ?it/s]\rsteps:   8%|▊         | 1/12 [00:01<00:11,  1.00s/it]"
    )
    steps = [e.step for e in parser.feed(text) if e.event == "step"]
    assert steps == [5]  # epoch 2 starts at step 4 (8 batches / 2 = 4 steps per epoch)


def test_carriage_returns_split_into_progress_pieces():
    parser = ConsoleParser()
    pieces = parser.feed_pieces("loading\r\nrunning training / 学習開始\n\rsteps:   0%|          | 0/4 [00:00<?, ?it/s]")
    assert [(p.text, p.progress) for p in pieces] == [
        ("loading", False),
        ("running training / 学習開始", False),
        ("steps:   0%|          | 0/4 [00:00<?, ?it/s]", True),
    ]
    # the terminator of an already reported redraw does not report it twice
    assert parser.feed_pieces("\r") == []
    more = parser.feed_pieces("steps:  25%|██▌       | 1/4 [00:01<00:03,  1.00s/it, avr_loss=0.2]\nepoch 1/1\n")
    assert [p.progress for p in more] == [True, False]


def test_partial_bar_waits_for_the_rest():
    parser = ConsoleParser()
    assert parser.feed("\rsteps:  26%|██▌       | 260/10") == []
    events = parser.feed("00 [04:20<12:20,  1.00s/it, avr_loss=0.0841]")
    step = [e for e in events if e.event == "step"][0]
    assert (step.step, step.total_steps, step.loss, step.sec_per_step) == (260, 1000, 0.0841, 1.0)


def test_validation_bars_and_ansi_are_not_training_steps():
    assert is_progress("\x1b[Asteps:  50%|█████     | 5/10 [00:05<00:05,  1.00it/s]")
    assert not is_progress("validation steps:  50%|█████     | 5/10 [00:05<00:05,  1.00it/s]")
    assert not is_progress("epoch validation steps: 100%|██████████| 2/2 [00:01<00:00]")


def test_train_state_fix_and_resume_parser(tmp_path):
    from anima_lora_flow.config import TrainingConfig

    state = tmp_path / "my_lora-step00000004-state"
    state.mkdir()
    (state / "train_state.json").write_text(json.dumps({"current_epoch": 2, "current_step": 4}))
    assert fix_train_state(state, step=8) is True  # the parser's absolute step for this state
    assert read_train_state(state) == {"current_epoch": 2, "current_step": 8}
    assert fix_train_state(state, step=8) is False
    parser = resume_parser(TrainingConfig(dataset="/d"), state)
    assert (parser.resumed_step, parser.skip) == (8, True)
    with pytest.raises(FileNotFoundError, match="not an sd-scripts state"):
        read_train_state(tmp_path)


def test_state_is_reported_only_once_written():
    """sd-scripts names the state before accelerate writes it; a copy taken then would be partial."""
    parser = ConsoleParser()
    parser.feed("  total optimization steps / 学習ステップ数: 8\n\rsteps:  50%|█████     | 4/8 [00:04<00:04,  1.00s/it]\n")
    assert parser.feed("save train state to /o/s-state/train_state.json at epoch 1 step 4\n") == []
    assert parser.feed("Optimizer state saved in /o/s-state/optimizer.bin\n") == []
    [event] = parser.feed("Random states saved in /o/s-state/random_states_0.pkl\n")
    assert (event.kind, event.path, event.step) == ("state", "/o/s-state", 4)
