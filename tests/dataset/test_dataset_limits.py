"""Repeat counts and samples per epoch have stated bounds, refused at validate and plan time with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from anima_lora_flow.cli import main
from anima_lora_flow.dataset import validate
from anima_lora_flow.core.dataset_report import DatasetError
from anima_lora_flow.dataset.validate import MAX_REPEATS, validate_folder

from dataset_builders import write_caption, write_image


def test_the_folder_bound_is_the_repeats_flags_bound():
    assert MAX_REPEATS == 1000


def test_a_huge_kohya_folder_is_refused_naming_the_folder_and_the_limit(tmp_path: Path):
    write_image(tmp_path / "ok" / "a.png"), write_caption(tmp_path / "ok" / "a.txt")
    write_image(tmp_path / "99999999999_x" / "b.png")
    with pytest.raises(DatasetError) as caught:
        validate_folder(tmp_path)
    assert str(caught.value) == (
        "folder '99999999999_x' asks for 99999999999 repeats, over the limit of 1000; rename it to N_name with N from 1 to 1000"
    )


def test_the_bound_itself_is_accepted(tmp_path: Path):
    write_image(tmp_path / "1000_x" / "b.png")
    assert validate_folder(tmp_path).samples_per_epoch == 1000


def test_too_many_samples_per_epoch_names_the_biggest_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(validate, "MAX_SAMPLES_PER_EPOCH", 1500)  # the real bound (a million) needs a thousand images
    write_image(tmp_path / "1000_a" / "a.png", size=(300, 256)), write_image(tmp_path / "600_b" / "b.png", size=(256, 300))
    with pytest.raises(DatasetError, match=r"^the dataset gives 1600 samples per epoch \(images x repeats\), over the limit of 1500; "
                       r"folder '1000_a' gives 1000 of them"):
        validate_folder(tmp_path)
    monkeypatch.setattr(validate, "MAX_SAMPLES_PER_EPOCH", 1600)
    assert validate_folder(tmp_path).samples_per_epoch == 1600


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_validate_and_plan_exit_2_with_one_line(tmp_path: Path, capsys, command: str):
    write_image(tmp_path / "ds" / "99999999999_x" / "b.png")
    argv = [command, str(tmp_path / "ds"), "--work-dir", str(tmp_path / "w")] + (["--gpu", "T4"] if command == "plan" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'99999999999_x' asks for 99999999999 repeats, over the limit of 1000" in err
