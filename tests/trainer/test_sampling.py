"""Sample images on the tiny model: deterministic, resumable, the base row made once, failures never cost the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.trainer.events import Samples
from anima_lora_flow.trainer.run import TrainJob, run_training

# Small previews (64 px) keep the VAE decode, most of a sampling point's time on a CPU, to a fraction of a second.
PROMPTS = "1girl, solo, smile, blue hair --w 64 --h 64 --s 3 --d 5\ncat ears, red eyes --w 64 --h 128 --s 3 --l 1\n"


@pytest.fixture
def job(items, tiny_model, tmp_path, tiny_config):
    """A function: a tiny sampling run's TrainJob writing to tmp_path/<name>; caches (and the base row) in tmp_path/work."""
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text(PROMPTS, encoding="utf-8")

    def make(name="out", resume=None, work="work", **overrides) -> TrainJob:
        fields = dict(sample_every_n_epochs=1, sample_prompts=str(prompt_file), caption_dropout=0.0, min_bucket_reso=64)
        return TrainJob(
            config=tiny_config(**{**fields, **overrides}), items=[item.to_json() for item in items],
            models_dir=str(tiny_model), work_dir=str(tmp_path / work), output_dir=str(tmp_path / name),
            resume_state=resume, dataset_fingerprint="ds1",
        )  # fmt: skip

    return make


def _samples(events) -> list[Samples]:
    return [e for e in events if isinstance(e, Samples)]


def _rows(grid_path: str) -> tuple[np.ndarray, np.ndarray]:
    """The base and LoRA images of a grid's first column (sample_grid's layout)."""
    from anima_lora_flow.trainer.sample_grid import CELL, FONT_SIZE, PAD, _font, _text_width

    grid = np.asarray(Image.open(grid_path).convert("RGB"))
    left = max(_text_width(_font(FONT_SIZE), n) for n in ("base", "LoRA")) + 2 * PAD
    top = FONT_SIZE + 3 + 2 * PAD
    base = grid[top : top + CELL, left : left + CELL]
    lora = grid[top + CELL + PAD : top + 2 * CELL + PAD, left : left + CELL]
    return base, lora


def test_grids_at_every_epoch_and_the_end_are_reproducible_and_the_lora_row_moves(job, tmp_path):
    events = []
    result = run_training(job("a", max_train_epochs=2, learning_rate=5e-2), events.append)
    samples = _samples(events)
    # Epoch 1's end, then the run's end (epoch 2's end, sampled once, after the final LoRA).
    assert [(e.step, e.epoch) for e in samples] == [(3, 1), (6, 2)] and all(e.error is None for e in samples)
    assert [e.event for e in events].index("done") < events.index(samples[-1])
    assert Path(samples[0].path) == tmp_path / "a" / "samples" / "tiny-step00000003.png"
    assert samples[0].prompts == ["1girl, solo, smile, blue hair", "cat ears, red eyes"]
    assert len(samples[0].base) == 2 and all(Path(b).is_file() for b in samples[0].base)
    assert samples[1].base == []  # made once: only the point that drew them lists them (the runner stores them)
    assert result.final_lora

    # Same weights and seeds, same bytes: a second run in a fresh work dir draws the same grids.
    again = []
    run_training(job("b", work="work2", max_train_epochs=2, learning_rate=5e-2), again.append)
    for first, second in zip(samples, _samples(again), strict=True):
        assert Path(first.path).read_bytes() == Path(second.path).read_bytes()

    # After a short overfit the LoRA row no longer equals the base row; before training they would match.
    base, lora = _rows(samples[-1].path)
    assert np.abs(base.astype(int) - lora.astype(int)).mean() > 1.0


def test_a_resumed_run_gives_the_same_grids_and_reuses_the_base_row(job, tmp_path):
    straight = []
    run_training(job("straight", max_train_epochs=2), straight.append)
    expected = {e.step: Path(e.path).read_bytes() for e in _samples(straight)}
    base_files = [Path(b) for b in _samples(straight)[0].base]
    made = {p: p.stat().st_mtime_ns for p in base_files}

    calls = iter(range(1, 100))
    first_events = []
    first = run_training(job("split", max_train_epochs=2), first_events.append, stop_requested=lambda: next(calls) >= 4)
    assert first.stopped
    # A stop samples too (after the state and the "stopped" event); epoch 1's end was sampled before it.
    assert [e.step for e in _samples(first_events)] == [3, 4]
    assert [e.event for e in first_events].index("stopped") < first_events.index(_samples(first_events)[-1])
    second_events = []
    run_training(job("split", resume=first.state, max_train_epochs=2), second_events.append)
    got = {e.step: Path(e.path).read_bytes() for e in _samples(first_events) + _samples(second_events)}
    assert got[3] == expected[3] and got[6] == expected[6]
    # The base row was drawn once, by the first run in this work dir; every later grid reused it.
    assert all(e.base == [] for e in _samples(first_events) + _samples(second_events))
    assert {p: p.stat().st_mtime_ns for p in base_files} == made


def test_a_sampling_failure_is_reported_and_training_finishes(job, tiny_model, tmp_path):
    # A sampler schedule that cannot be read (training never reads it): every sampling point fails, the run must not.
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "scheduler" / "scheduler_config.json").write_text("{ not json", encoding="utf-8")
    events = []
    spec = job("f", max_train_epochs=2)
    spec.models_dir = str(broken)
    result = run_training(spec, events.append)
    assert result.final_lora and not result.stopped and Path(result.final_lora).is_file()
    failed = _samples(events)
    assert [e.step for e in failed] == [3, 6] and all(e.path is None and e.error for e in failed)
    assert events[-1] is failed[-1] and [e.event for e in events].count("done") == 1
    assert not (tmp_path / "f" / "samples").exists()


@pytest.mark.slow  # two gloo processes sampling; the one-process grids are tested in CI
def test_two_processes_draw_one_grid_per_point_and_finish(tmp_path, items, tiny_model, tiny_config):
    """Data parallel: process 0 samples while the other waits at the barrier; neither hangs, one grid per point."""
    import os
    import subprocess
    import sys

    from anima_lora_flow.trainer.events import read_events

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1girl, solo --w 64 --h 64 --s 2\n", encoding="utf-8")
    config = tiny_config(num_gpus=2, sample_every_n_epochs=1, sample_prompts=str(prompts), min_bucket_reso=64)
    job = TrainJob(config, [i.to_json() for i in items], str(tiny_model), str(tmp_path / "work"), str(tmp_path / "dp"))
    job_file, events_file = job.save(tmp_path / "dp.json"), tmp_path / "dp.jsonl"
    cmd = [sys.executable, "-m", "anima_lora_flow.trainer", "--job", str(job_file), "--events", str(events_file),
           "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    samples = [e for e in read_events(events_file) if isinstance(e, Samples)]
    assert [(e.step, e.error) for e in samples] == [(2, None), (4, None)]  # 2 steps per epoch on 2 processes
    assert all(Path(e.path).is_file() for e in samples)
