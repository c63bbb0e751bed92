"""The console parser against sd-scripts output written from its real formats (fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anima_lora_flow.trainer.events import Log
from anima_lora_flow.trainer.sdscripts.console import ConsoleParser, is_progress
from anima_lora_flow.trainer.sdscripts.resume import fix_train_state, read_train_state, resume_parser

FIXTURES = Path(__file__).parent / "fixtures"


def _read(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def _feed(parser: ConsoleParser, text: str, size: int | None) -> list:
    """Events of the whole stream, fed in chunks of `size`, as the launcher does (flush at EOF)."""
    chunks = [text] if size is None else [text[i : i + size] for i in range(0, len(text), size)]
    return [e for chunk in chunks for e in parser.feed(chunk)] + [e for piece in parser.flush() for e in piece.events]


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
    # Fast steps: tqdm skips update()'s draw under 0.1 s, so steps 2-8 are drawn once, by set_postfix.
    assert [e.loss for e in steps] == pytest.approx([0.112, 0.105, 0.0990, 0.0975, 0.0951, 0.0932, 0.0917, 0.0902])
    assert steps[0].sec_per_step == pytest.approx(2.01)
    assert steps[3].sec_per_step == pytest.approx(0.8)  # 1.25 it/s
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
    events = parser.feed("  total optimization steps / 学習ステップ数: 12\n\rsteps:  10%|█         | 1/10 [00:02<00:18,  2.00s/it]"
                         "\rsteps:  10%|█         | 1/10 [00:02<00:18,  2.00s/it, avr_loss=0.1]")
    assert [(e.step, e.loss) for e in events if e.event == "step"] == [(7, 0.1)]


def test_resume_without_skipping_restarts_the_epoch():
    """With gradient accumulation (no skip_until_initial_step) sd-scripts redoes the interrupted epoch."""
    parser = ConsoleParser(initial_step=6, skip_until_initial_step=False)
    text = (
        "  num batches per epoch / 1epochのバッチ数: 8\n"
        "  gradient accumulation steps / 勾配を合計するステップ数 = 2\n"
        "  total optimization steps / 学習ステップ数: 12\n"
        "\rsteps:   0%|          | 0/12 [00:00<?, ?it/s]\rsteps:   8%|▊         | 1/12 [00:01<00:11,  1.00s/it]"
    )
    steps = [e.step for e in _feed(parser, text, None) if e.event == "step"]
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
    parser.feed("\rsteps:  26%|██▌       | 260/1000 [04:20<12:20,  1.00s/it, avr_loss=0.0839]")
    assert parser.step == 260  # update()'s draw, still with step 259's loss
    assert parser.feed("\rsteps:  26%|██▌       | 260/10") == []
    events = parser.feed("00 [04:20<12:20,  1.00s/it, avr_loss=0.0841]")
    step = [e for e in events if e.event == "step"][0]
    assert (step.step, step.total_steps, step.loss, step.sec_per_step) == (260, 1000, 0.0841, 1.0)


def test_padding_of_a_redraw_in_a_later_chunk_is_the_same_draw():
    """tqdm pads a redraw shorter than the last one with spaces; a pipe may split them off."""
    parser = ConsoleParser()
    parser.feed("\rsteps:  50%|█████     | 2/4 [00:02<00:02,  1.00s/it, avr_loss=0.0939]")
    assert [e.event for e in parser.feed("\rsteps:  75%|███████▌  | 3/4 [00:03<00:01,  1.00s/it, avr_loss=0.094]")] == ["step"]
    assert parser.feed("  ") == []  # not a second draw of step 3, so no step event with the old loss
    [step] = parser.feed("\rsteps:  75%|███████▌  | 3/4 [00:03<00:01,  1.00s/it, avr_loss=0.0925]")
    assert (step.step, step.loss) == (3, 0.0925)


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_each_step_carries_its_own_loss(chunk):
    """sd-scripts draws a step's bar at update(1), with the previous step's avr_loss, then again at
    set_postfix with its own (cpu_run.log: a real tqdm replaying train_network.py's order)."""
    parser = ConsoleParser()
    events = _feed(parser, _read("cpu_run.log"), chunk)
    steps = [e for e in events if e.event == "step"]
    assert [(e.step, e.loss, e.epoch) for e in steps] == [(1, 2.17, 1), (2, 2.05, 1), (3, 1.98, 2), (4, 1.91, 2)]
    assert [e.sec_per_step for e in steps] == [77.57, 76.62, 77.35, 77.02]
    checkpoints = [(e.kind, e.path, e.step, e.epoch, e.reported_step) for e in events if e.event == "checkpoint"]
    assert checkpoints == [  # a step save runs between the two draws: it belongs to the new step
        ("lora", "/out/kohya-000001.safetensors", 2, 1, None),
        ("state", "/out/kohya-000001-state", 2, 1, 2),
        ("lora", "/out/kohya-step00000003.safetensors", 3, 2, 3),
        ("state", "/out/kohya-step00000003-state", 3, 2, 3),
        ("state", "/out/kohya-state", 4, 2, 4),
        ("lora", "/out/kohya.safetensors", 4, 2, None),
    ]
    # The last step goes out at its set_postfix draw, not at the end of the stream.
    text = _read("cpu_run.log")
    early = ConsoleParser().feed(text[: text.index("saving last state.")])
    assert [(e.step, e.loss) for e in early if e.event == "step"][-1] == (4, 1.91)


def test_stop_between_the_two_draws_reports_the_step_without_a_borrowed_loss():
    """Stopped during step 3's save: its only draw shows step 2's loss, which is not step 3's."""
    text = _read("cpu_run.log")
    cut = text.index("saving state at step 3")
    parser = ConsoleParser()
    events = parser.feed(text[:cut])
    assert [(e.step, e.loss) for e in events if e.event == "step"] == [(1, 2.17), (2, 2.05)]
    assert parser.step == 3  # what Stopped reports: not held back waiting for the loss
    [piece] = parser.flush()
    assert not piece.echo and [(e.step, e.loss) for e in piece.events] == [(3, None)]


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


@pytest.mark.parametrize("chunk", [None, 3, 64])
def test_a_sampling_point_is_reported_once_training_moves_on(chunk):
    """validation_crash.log, captured from sd-scripts 48d368fa on the CPU: it samples before the first step
    (sample_at_first), trains a step, and dies in its own Anima validation (validating_train_network.py)."""
    calls = []

    def on_samples(step, epoch):
        calls.append((step, epoch))
        return [Log(message=f"grid {step}")]

    parser = ConsoleParser(on_samples=on_samples)
    text = _read("validation_crash.log")
    events = _feed(parser, text, chunk)
    assert calls == [(0, 0)]  # step 0, sd-scripts' e000000 files: the base row
    kinds = [e.event if e.event != "log" or not e.message.startswith("grid") else "grid" for e in events]
    assert kinds.index("grid") < kinds.index("step")  # reported when the bar appears, not at the end
    early = ConsoleParser(on_samples=on_samples)
    early.feed(text[: text.index("Sampling: 100%")])
    assert calls == [(0, 0)]  # still sampling: nothing collected yet
    assert parser.validation_images == 1
    assert not [e for e in events if e.event == "validation"]  # it died at 1 of 4: no loss is made up


def test_a_resumed_run_knows_its_best_epoch_from_the_state(tmp_path):
    """The validation losses travel in the state folder (our file; accelerate reads only its own)."""
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.trainer.sdscripts.resume import write_validation_history

    state = tmp_path / "kohya-000002-state"
    state.mkdir()
    (state / "train_state.json").write_text(json.dumps({"current_epoch": 2, "current_step": 2}))
    write_validation_history(state, [{"step": 1, "epoch": 1, "loss": 0.5}, {"step": 2, "epoch": 2, "loss": 0.7}])
    parser = resume_parser(TrainingConfig(dataset="/d"), state)
    parser.feed("epoch 3/3\n\rsteps: 100%|██████████| 1/1 [00:01<00:00,  1.00s/it, avr_loss=0.1]\n")
    parser.feed("\repoch validation steps:  75%|███████▌  | 3/4 [00:03<00:01,  1.00s/it, val_epoch_avg_loss=0.6, timestep=600]")
    parser.feed("\repoch validation steps: 100%|██████████| 4/4 [00:04<00:00,  1.00s/it, val_epoch_avg_loss=0.6, timestep=800]")
    [event] = [e for e in parser.feed("\nGenerating sample images at step 3\n") if e.event == "validation"]
    assert (event.step, event.epoch, event.loss, event.best_epoch, event.best_loss) == (3, 3, 0.6, 1, 0.5)
    (state / "anima_validation.json").unlink()  # a state saved before any validation: nothing to go on
    assert resume_parser(TrainingConfig(dataset="/d"), state).validation_history == []


def test_each_state_is_given_the_losses_so_far_before_it_is_reported(tmp_path):
    from anima_lora_flow.trainer.events import Checkpoint
    from anima_lora_flow.trainer.sdscripts.__main__ import _keeping_validation
    from anima_lora_flow.trainer.sdscripts.resume import read_validation_history

    state = tmp_path / "kohya-000001-state"
    state.mkdir()
    parser = ConsoleParser(validation_history=[{"step": 1, "epoch": 1, "loss": 0.5}])
    seen = []
    sink = _keeping_validation(lambda e: seen.append((e, read_validation_history(state))), parser)
    sink(Checkpoint(kind="state", path=str(state), step=1, epoch=1))
    assert seen[0][1] == [{"step": 1, "epoch": 1, "loss": 0.5}]  # on disk before the runner hears of the state


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_validation_losses_and_sampling_points_of_a_real_run(chunk):
    """sampling_validation_run.log: a real 2-epoch CPU run through validating_train_network.py. Each epoch's
    loss is its bar's last (set_postfix) draw; the previous epoch's bar redraws its end when the next one
    starts, and once more at exit; at the last epoch the sampling line follows the bar's cursor-up codes
    on the same line."""
    calls = []

    def on_samples(step, epoch):
        calls.append((step, epoch))
        return []

    parser = ConsoleParser(on_samples=on_samples, validation_held_out=True)
    events = _feed(parser, _read("sampling_validation_run.log"), chunk)
    assert calls == [(0, 0), (1, 1), (2, 2)]
    validations = [(e.step, e.epoch, e.loss, e.images, e.held_out, e.best_epoch, e.best_loss)
                   for e in events if e.event == "validation"]  # fmt: skip
    assert validations == [(1, 1, 1.98, 1, True, 1, 1.98), (2, 2, 1.94, 1, True, 2, 1.94)]
    assert [(e.step, e.loss) for e in events if e.event == "step"] == [(1, 2.19), (2, 2.0)]
    assert [e.final for e in events if e.event == "checkpoint" and e.kind == "lora"] == [False, True]
