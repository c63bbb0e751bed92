"""The LR schedule re-planned from a resumed step when the run's total steps change (more or fewer epochs)."""

from __future__ import annotations

import json

import pytest
import torch

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.effective import Machine, derive
from anima_lora_flow.trainer.native import NativeBackend
from anima_lora_flow.trainer.loop import build_scheduler
from anima_lora_flow.trainer.run import TrainJob, run_training
from anima_lora_flow.trainer.state import PROGRESS_FILE

NATIVE = NativeBackend.numbers

LR = 1e-3


def _eff(cfg: TrainingConfig, epochs: int):
    return derive(cfg.model_copy(update={"max_train_epochs": epochs}), {(768, 768): 10}, Machine(), NATIVE)  # 10 steps per epoch


def _optimizer():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)


def _old_run(cfg: TrainingConfig, epochs: int, step: int):
    """The optimizer of a run of `epochs` after `step` steps, as a resume finds it (its LR is the next step's)."""
    opt = _optimizer()
    sched = build_scheduler(opt, cfg, _eff(cfg, epochs))
    for _ in range(step):
        opt.step()
        sched.step()
    return opt


def _lrs(opt, sched, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "cosine_with_restarts", "polynomial"])
def test_a_longer_run_continues_from_the_current_rate(name):
    cfg = TrainingConfig(dataset="d", learning_rate=LR, lr_scheduler=name, lr_warmup_steps=5)
    old = _old_run(cfg, 10, 60)  # 100 steps planned, 60 done
    lr_now = old.param_groups[0]["lr"]
    eff = _eff(cfg, 20)  # now 200 steps (the same warm-up: 5 <= 200 // 10)
    sched = build_scheduler(old, cfg, eff, step=60, lr_at_step=lr_now)
    lrs = _lrs(old, sched, 140)
    assert lrs[0] == pytest.approx(lr_now, rel=1e-12)  # no jump
    assert max(lrs) <= LR * (1 + 1e-12)
    if name == "constant":
        assert lrs == [pytest.approx(LR)] * 140
    if name == "linear":  # a straight line from the current rate to 0 at the new end
        assert lrs[70] == pytest.approx(lr_now * (200 - 130) / (200 - 60), rel=1e-9)
    if name in ("linear", "cosine", "cosine_with_restarts"):
        assert lrs[-1] < lr_now * 0.02 and all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_a_resume_during_a_longer_new_warm_up_never_exceeds_the_peak():
    cfg = TrainingConfig(dataset="d", learning_rate=LR, lr_scheduler="linear", lr_warmup_steps=100)
    old = _old_run(cfg, 10, 6)  # 100 steps: warm-up 10, LR 6/10 of the peak
    eff = _eff(cfg, 100)  # 1000 steps: warm-up 100; continuing 0.6 peak on a 6/100 ramp would need 10x the peak
    sched = build_scheduler(old, cfg, eff, step=6, lr_at_step=old.param_groups[0]["lr"])
    lrs = _lrs(old, sched, 200)
    assert lrs[0] == pytest.approx(LR * 6 / 100)  # the new schedule's own value at step 6
    assert max(lrs) == pytest.approx(LR)


def test_more_epochs_on_resume_continue_the_rate(tmp_path, items, tiny_model, tiny_config):
    """A run of 2 epochs (6 steps) stopped at step 4, resumed with 4 epochs (12 steps): linear goes on from
    the saved rate to 0 at step 12, instead of jumping to the 12-step line's value at step 4."""
    def job(name, epochs, resume=None):
        config = tiny_config(max_train_epochs=epochs, lr_scheduler="linear", lr_warmup_steps=0, save_every_n_epochs=0)
        return TrainJob(config, [i.to_json() for i in items], str(tiny_model), str(tmp_path / "work"), str(tmp_path / name),
                        resume_state=resume)  # fmt: skip

    calls = iter(range(1, 100))
    first = run_training(job("first", 2), stop_requested=lambda: next(calls) >= 4)
    assert first.stopped and first.steps == 4
    progress = json.loads((tmp_path / "first" / "state" / "step_00000004" / PROGRESS_FILE).read_text())
    assert progress["total_steps"] == 6
    saved_lr = LR_TINY * (6 - 4) / 6  # what the 6-step line gives the 5th step

    events = []
    resumed = run_training(job("first", 4, first.state), events.append)
    assert resumed.steps == 12 and not resumed.stopped
    assert any("now has 12 steps instead of 6" in e.message for e in events if e.event == "log")
    step_10 = next(e for e in events if e.event == "step" and e.step == 10)
    assert step_10.lr == pytest.approx(saved_lr * (12 - 10) / (12 - 4), rel=1e-9)  # the 12-step line alone: 1/6 of LR


LR_TINY = 1e-3  # tests/trainer/conftest.py's learning_rate
