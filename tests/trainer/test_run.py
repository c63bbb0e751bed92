"""End to end on the tiny model: a run, its events and files, the planner's count, exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from anima_lora_flow.core.buckets import batches_per_epoch, optimizer_steps_per_epoch
from anima_lora_flow.core.train_items import samples_per_bucket
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.lora import load_lora_file
from anima_lora_flow.trainer.run import TrainJob, run_training



@pytest.fixture
def job(items, tiny_model, tmp_path, tiny_config):
    """A function: the TrainJob for a tiny run writing to tmp_path/<name> (caches shared in tmp_path/work)."""

    def make(name="out", resume=None, items=items, **overrides) -> TrainJob:
        return _job(items, tiny_model, tmp_path, tiny_config(**overrides), name, resume)

    return make


def _job(items, tiny_model, tmp_path, config, name, resume) -> TrainJob:
    return TrainJob(
        config=config,
        items=[item.to_json() for item in items],
        models_dir=str(tiny_model),
        work_dir=str(tmp_path / "work"),
        output_dir=str(tmp_path / name),
        resume_state=resume,
        dataset_fingerprint="ds1",
    )


def test_run_trains_and_reports(job, items, tmp_path):
    events = []
    result = run_training(job(max_train_epochs=3), events.append)
    kinds = [e.event for e in events]
    assert kinds[0] == "plan" and kinds[-1] == "done"
    planned = optimizer_steps_per_epoch(batches_per_epoch(samples_per_bucket(items), 1), 1) * 3
    assert events[0].total_steps == planned == result.steps == 9
    assert math.isfinite(result.last_loss)
    steps = [e for e in events if e.event == "step"]
    assert [e.step for e in steps] == [9] and steps[-1].total_steps == 9  # read-outs every 10 steps and at the end
    loras = [e.path for e in events if e.event == "checkpoint" and e.kind == "lora"]
    assert [p.rsplit("/", 1)[-1] for p in loras] == ["tiny-000001.safetensors", "tiny-000002.safetensors", "tiny.safetensors"]
    states = [e for e in events if e.event == "checkpoint" and e.kind == "state"]
    assert [e.step for e in states] == [3, 6, 9]
    assert len(list((tmp_path / "out" / "state").iterdir())) == 2  # keep_last_states
    final = load_lora_file(result.final_lora)
    assert any(v.abs().sum() > 0 for k, v in final.items() if "lora_B" in k)  # B moved away from zero


def test_resume_gives_identical_lora_and_losses(job, items, monkeypatch):
    """N steps straight == stop + resume + the rest: same LoRA tensors (torch.equal), same losses and lrs."""
    monkeypatch.setattr("anima_lora_flow.trainer.loop.LOG_EVERY", 1)  # a loss read-out at every step
    # 3 items x 2 repeats, accumulation 2: 3 steps per epoch, 6 in all.
    items = [type(i)(i.image_path, i.caption, i.bucket, repeats=2) for i in items]
    opts = dict(gradient_accumulation_steps=2, max_train_epochs=2, lr_scheduler="cosine_with_restarts")
    straight_events = []
    straight = run_training(job("straight", items=items, **opts), straight_events.append)
    expected = load_lora_file(straight.final_lora)
    losses = lambda evs: [(e.step, e.loss, e.lr) for e in evs if e.event == "step"]  # noqa: E731

    for stop_after in (2, 4):  # mid-epoch 1 (the resume crosses an epoch end), mid-epoch 2
        calls = iter(range(1, 100))
        name = f"split{stop_after}"
        first = run_training(job(name, items=items, **opts), stop_requested=lambda: next(calls) >= stop_after)
        assert first.stopped and first.steps == stop_after and first.final_lora is None
        events = []
        second = run_training(job(name, resume=first.state, items=items, **opts), events.append)
        assert second.steps == straight.steps == 6
        got = load_lora_file(second.final_lora)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
        assert losses(events) == losses(straight_events)[stop_after:]


def test_stop_emits_stopped_with_state(job):
    events = []
    result = run_training(job(), events.append, stop_requested=lambda: "deadline")
    stopped = events[-1]
    assert stopped.event == "stopped" and stopped.reason == "deadline" and stopped.state == result.state
    assert stopped.step == 1


def test_resume_refuses_other_settings(job):
    first = run_training(job(), stop_requested=lambda: True)
    with pytest.raises(UserInputError, match="--network-dim 4 -> 8"):
        run_training(job(resume=first.state, network_dim=8))


def test_kohya_copies_are_written_and_pruned_with_the_epoch_loras(job, tmp_path):
    result = run_training(job("kohya", max_train_epochs=3, save_last_n_epochs=1, save_kohya_lora=True))
    names = sorted(p.name for p in (tmp_path / "kohya").glob("*.safetensors"))
    assert names == ["tiny-000002.kohya.safetensors", "tiny-000002.safetensors", "tiny.kohya.safetensors", "tiny.safetensors"]
    kohya = load_lora_file(tmp_path / "kohya" / "tiny.kohya.safetensors")
    comfy = load_lora_file(result.final_lora)
    assert len(kohya) == len(comfy) // 2 * 3  # down, up and alpha per module
    assert all(k.startswith("lora_unet_blocks_") for k in kohya)


def _overflowing_copy(tiny_model, dest):
    """The tiny model with one attention projection scaled past fp32's range: what an fp16 overflow does."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, dest)
    weights = dest / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("attn1.to_q.weight"))
    tensors[key] = tensors[key] * 1e38
    save_file(tensors, weights)
    return dest


def test_nan_training_stops_without_overwriting_good_states(job, tmp_path, tiny_model):
    from anima_lora_flow.trainer.loop import TrainingDivergedError

    good = run_training(job("nan"), stop_requested=lambda: True)  # one good step, its state saved
    poisoned = job("nan", resume=good.state)
    poisoned.models_dir = str(_overflowing_copy(tiny_model, tmp_path / "overflowing"))
    with pytest.raises(TrainingDivergedError) as caught:
        run_training(poisoned)
    message = str(caught.value)
    assert "diverged at step 3" in message and f"the last good state is {good.state}" in message  # the epoch end
    assert "--restart" in message and "--learning-rate" in message
    states = sorted(p.name for p in (tmp_path / "nan" / "state").iterdir())
    assert states == ["step_00000001"]  # the NaN weights were never written, the good state never pruned
    assert not list((tmp_path / "nan").glob("*.safetensors"))


def test_events_and_the_resume_line_name_epochs_one_based(job):
    """3 steps per epoch, 2 epochs: a stop at step 4 is in epoch 2; a resume of the last state is after epoch 2 of 2."""
    events = []
    calls = iter(range(1, 100))
    first = run_training(job("epochs"), events.append, stop_requested=lambda: next(calls) >= 4)
    states = [e for e in events if e.event == "checkpoint" and e.kind == "state"]
    assert [(e.step, e.epoch, e.step_in_epoch, e.epochs, e.total_steps) for e in states] == [
        (3, 1, 0, 2, 6), (4, 1, 1, 2, 6)]  # epoch counts finished epochs; step_in_epoch tells end from middle

    resumed = []
    done = run_training(job("epochs", resume=first.state), resumed.append)
    assert resumed[0].event == "plan" and resumed[0].start_step == 4  # the bar starts at 4/6, not 0/6
    lines = [e.message for e in resumed if e.event == "log"]
    assert any(line.endswith("at step 4 of 6 (in epoch 2 of 2)") for line in lines), lines

    again = []
    run_training(job("epochs", resume=done.state), again.append)
    assert any(e.message.endswith("at step 6 of 6 (after epoch 2 of 2)") for e in again if e.event == "log")
    assert not [e for e in again if e.event == "step"]  # nothing trained: the state was the last step
