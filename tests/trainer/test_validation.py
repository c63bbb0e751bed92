"""The validation loss on the tiny model: a pure function of the weights, resumable, falling on an overfit,
and the best epoch's LoRA kept when older epochs are pruned."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from anima_lora_flow.core.train_items import TrainItem
from anima_lora_flow.trainer.loop import save_lora
from anima_lora_flow.trainer.lora import load_lora_file
from anima_lora_flow.trainer.run import TrainJob, build_session, effective_numbers, run_training
from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.trainer.validation import SIGMA_QUANTILES, fixed_sigmas, validate
from anima_lora_flow.trainer.loss import Objective



def _job(items, tiny_model, tmp_path, config, name, resume=None, held_out=()) -> TrainJob:
    return TrainJob(config=config, items=[i.to_json() for i in items], models_dir=str(tiny_model),
                    work_dir=str(tmp_path / "work"), output_dir=str(tmp_path / name), resume_state=resume,
                    dataset_fingerprint="ds1", validation_items=[i.to_json() for i in held_out])  # fmt: skip


def _images(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(11)
    paths = [folder / f"h{i}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
    return paths


def _validations(events) -> list[tuple[int, int, float]]:
    return [(e.step, e.epoch, e.loss) for e in events if e.event == "validation"]


def test_fixed_sigmas_are_the_training_distributions_quantiles():
    assert fixed_sigmas(Objective("uniform")) == list(SIGMA_QUANTILES)
    sig = fixed_sigmas(Objective("sigmoid", 1.0))
    assert len(sig) >= 4 and sig == sorted(sig) and 0.2 < sig[0] < 0.3 and 0.7 < sig[-1] < 0.8
    assert all(a < b for a, b in zip(sig, fixed_sigmas(Objective("shift", 1.0, 3.0))))  # shift moves them up


def test_same_weights_same_number_and_the_training_generator_untouched(items, tiny_model, tmp_path, tiny_config):
    cfg = TrainingConfig(**tiny_config())
    job = _job(items, tiny_model, tmp_path, tiny_config(), "out")
    session = build_session(job, cfg, items, Path(tiny_model), effective_numbers(items, cfg))
    assert session.validation.label == "training subset, 3 images"  # fewer images than the cap: all of them
    before = session.generator.get_state().clone()
    session.model.train()  # as the loop runs it
    first = session.validation.measure(session.model, session.cache, session.accelerator)
    second = session.validation.measure(session.model, session.cache, session.accelerator)
    assert first == second and math.isfinite(first)
    assert torch.equal(before, session.generator.get_state())
    assert session.model.training  # its mode given back


def test_resumed_run_measures_what_the_uninterrupted_run_measured(items, tiny_model, tmp_path, tiny_config):
    config = tiny_config(max_train_epochs=3)
    straight = []
    run_training(_job(items, tiny_model, tmp_path, config, "straight"), straight.append)
    assert [v[:2] for v in _validations(straight)] == [(3, 1), (6, 2), (9, 3)]
    calls = iter(range(1, 100))
    first_events = []
    first = run_training(_job(items, tiny_model, tmp_path, config, "split"), first_events.append,
                         stop_requested=lambda: next(calls) >= 5)  # mid-epoch 2
    assert first.stopped
    second = []
    run_training(_job(items, tiny_model, tmp_path, config, "split", resume=first.state), second.append)
    assert _validations(first_events) + _validations(second) == _validations(straight)
    # The best so far came through the state: the resumed run's events name the same best as the straight run's.
    last = [e for e in second if e.event == "validation"][-1]
    want = [e for e in straight if e.event == "validation"][-1]
    assert (last.best_epoch, last.best_loss) == (want.best_epoch, want.best_loss)
    meta = load_lora_file_metadata(Path(tmp_path / "split" / "tiny.safetensors"))
    assert meta["anima_validation_loss"] == f"{want.loss:.6g}" and meta["anima_validation_set"] == "training subset, 3 images"
    assert meta["anima_validation_best_epoch"] == str(want.best_epoch)


def load_lora_file_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return fh.metadata()


def test_an_overfit_on_the_training_subset_lowers_its_validation_loss(items, tiny_model, tmp_path, tiny_config):
    config = tiny_config(max_train_epochs=6, learning_rate=5e-3, caption_dropout=0.0, lr_warmup_steps=0,
                         save_every_n_epochs=0)  # fmt: skip
    events = []
    run_training(_job(items, tiny_model, tmp_path, config, "fit"), events.append)
    losses = [loss for _, _, loss in _validations(events)]
    # Measured: 1.478 -> 1.434, falling at every epoch (a deterministic CPU run).
    assert len(losses) == 6 and losses == sorted(losses, reverse=True) and losses[-1] < 0.98 * losses[0], losses


def test_held_out_items_are_measured_and_labelled_so(items, tiny_model, tmp_path, tiny_config):
    held = [TrainItem(p, "1girl, held out", (256, 256)) for p in _images(tmp_path / "held", 2)]
    events = []
    run_training(_job(items, tiny_model, tmp_path, tiny_config(max_train_epochs=1), "held", held_out=held), events.append)
    (v,) = [e for e in events if e.event == "validation"]
    assert v.held_out and v.images == 2 and v.best_epoch == 1
    assert "held-out, 2 images" in load_lora_file_metadata(tmp_path / "held" / "tiny.safetensors")["anima_validation_set"]


def test_the_best_epochs_lora_survives_pruning(items, tiny_model, tmp_path, tiny_config):
    """Epochs 1..4 saved with save_last_n_epochs=1: the newest and the best (epoch 2 here) stay."""
    cfg = TrainingConfig(**tiny_config(max_train_epochs=6, save_last_n_epochs=1))
    job = _job(items, tiny_model, tmp_path, tiny_config(), "prune")
    s = build_session(job, cfg, items, Path(tiny_model), effective_numbers(items, cfg))
    Path(s.output_dir).mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    names = [name for name, _ in s.model.named_parameters() if "lora_B" in name]
    draws = [{n: 100 * torch.randn(p.shape, generator=g) for n, p in s.model.named_parameters() if n in names} for _ in range(3)]
    base = {n: torch.zeros_like(t) for n, t in draws[0].items()}
    # Measured on the tiny model: draws[0] 1.61, base 1.49, draws[2] 1.46; epoch 2 gets the lowest.
    weights = {1: draws[0], 2: draws[2], 3: base, 4: draws[0]}
    for epoch in range(1, 5):
        with torch.no_grad():
            for name, param in s.model.named_parameters():
                if name in weights[epoch]:
                    param.copy_(weights[epoch][name])
        s.progress.epoch, s.progress.global_step = epoch, 3 * epoch
        validate(s)  # the real measurement
        if epoch == 2:
            best = s.progress.validation["best"]
        save_lora(s, Path(s.output_dir) / f"tiny-{epoch:06d}.safetensors", prune=True)
    assert s.progress.validation["best"]["epoch"] == 2 == best["epoch"], s.progress.validation
    kept = sorted(f.name for f in Path(s.output_dir).iterdir())
    assert kept == ["tiny-000002.safetensors", "tiny-000004.safetensors"]
    assert load_lora_file(Path(s.output_dir) / "tiny-000002.safetensors")  # a whole file


def test_a_new_validation_set_on_resume_starts_the_best_epoch_afresh(items, tiny_model, tmp_path, tiny_config):
    first_set = [TrainItem(p, "1girl, held out", (256, 256)) for p in _images(tmp_path / "a", 1)]
    other_set = [TrainItem(p, "1boy, held out", (256, 256)) for p in _images(tmp_path / "b", 2)]
    first = run_training(_job(items, tiny_model, tmp_path, tiny_config(max_train_epochs=1), "swap", held_out=first_set))
    events = []
    run_training(_job(items, tiny_model, tmp_path, tiny_config(max_train_epochs=2), "swap", resume=first.state,
                      held_out=other_set), events.append)  # fmt: skip
    (v,) = [e for e in events if e.event == "validation"]
    assert (v.epoch, v.images, v.best_epoch) == (2, 2, 2)  # epoch 1's loss was on other images: not comparable
    assert any("the validation set changed since the saved state" in e.message for e in events if e.event == "log")


def test_a_failed_measurement_is_logged_and_the_training_goes_on(items, tiny_model, tmp_path, tiny_config, caplog):
    """A validation set whose entry is missing from the cache (as an out-of-memory error would) ends nothing."""
    import dataclasses

    cfg = TrainingConfig(**tiny_config())
    job = _job(items, tiny_model, tmp_path, tiny_config(), "out")
    session = build_session(job, cfg, items, Path(tiny_model), effective_numbers(items, cfg))
    session.validation = dataclasses.replace(session.validation, indices=[10_000])
    with caplog.at_level("WARNING", logger="anima_lora_flow.trainer"):
        assert validate(session) is None
    assert any("could not be measured" in r.getMessage() for r in caplog.records)
    assert session.progress.validation.get("history", []) == []
