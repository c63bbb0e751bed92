"""Held-out validation images: split off before steps are counted, the same on every call, refused when empty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.cli import main
from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.runner.prepare import dataset_report
from anima_lora_flow.trainer.run import effective_numbers


def make_dataset(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(f"1girl, pose {i}")
    return folder


@pytest.fixture
def ten(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds", 10)


def _config(tmp_path, dataset, **overrides) -> TrainingConfig:
    return TrainingConfig(dataset=str(dataset), work_dir=str(tmp_path / "w"), resolution=256, **overrides)


def test_split_holds_out_the_same_images_every_time_and_none_of_them_trains(tmp_path, ten):
    cfg = _config(tmp_path, ten, validation_split=0.2)
    first, again = dataset_report(cfg), dataset_report(cfg)
    held = sorted(i.path for i in first.held_out)
    assert len(first.images) == 8 and len(held) == 2 and first.held_out_source == "validation_split"
    assert held == sorted(i.path for i in again.held_out)
    assert not {str(ten / i.path) for i in first.images} & set(held)
    assert all(Path(p).is_file() for p in held) and "2 held out for the validation loss" in first.summary()
    others = {tuple(sorted(i.path for i in dataset_report(_config(tmp_path, ten, validation_split=0.2, seed=s)).held_out))
              for s in range(6)}
    assert len(others) > 1  # a function of the seed, not of the folder's order
    assert dataset_report(_config(tmp_path, ten)).held_out == []


def test_plan_and_trainer_count_the_same_steps_without_the_held_out_images(tmp_path, ten, capsys):
    def planned(*flags) -> int:
        assert main(["plan", str(ten), "--work-dir", str(tmp_path / "w"), "--resolution", "256", "--gpu", "T4",
                     "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)["steps"]["total_steps"]

    cfg = _config(tmp_path, ten, validation_split=0.3)
    report = dataset_report(cfg)
    trainer = effective_numbers(report.train_items(), cfg).total_steps  # what run_training's Plan event carries
    assert planned("--validation-split", "0.3") == trainer == 7 * 5 * 10  # 7 images x 5 repeats x 10 epochs
    assert planned() == 10 * 5 * 10


def test_a_validation_dataset_without_a_trainable_image_is_refused_before_any_download(tmp_path, ten, capsys):
    empty = tmp_path / "val"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    code = main(["train", "--dataset", str(ten), "--validation-dataset", str(empty), "--dry-run",
                 "--work-dir", str(tmp_path / "w"), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --validation-dataset: no images found in") and err.count("\n") == 1
    assert not (tmp_path / "w" / "models").exists()


def test_a_validation_dataset_becomes_the_held_out_set(tmp_path, ten):
    val = make_dataset(tmp_path / "val", 3)
    report = dataset_report(_config(tmp_path, ten, validation_dataset=str(val)))
    assert len(report.images) == 10 and len(report.held_out) == 3
    assert {Path(i.image_path) for i in report.validation_items()} == {val / f"im{i}.png" for i in range(3)}


def test_split_and_validation_dataset_together_are_refused(capsys, tmp_path):
    assert main(["plan", "ds", "--validation-split", "0.1", "--validation-dataset", "v"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_split_of_a_single_image_is_refused(tmp_path):
    one = make_dataset(tmp_path / "one", 1)
    with pytest.raises(UserInputError, match="needs at least 2 trainable images"):
        dataset_report(_config(tmp_path, one, validation_split=0.1))
