"""A dry run, or a train refused before training, leaves no new empty folder in storage (the new-user test found
an empty project folder after `train --dry-run` and an empty runs/x/ after a refusal for no GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anima_lora_flow.cli import main

from test_cli_resume import base_args, make_dataset, publish_state  # tests/ is on the path (its conftest)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_a_dry_run_creates_no_storage_folder(tmp_path: Path, capsys):
    make_dataset(tmp_path / "ds")
    assert main(["train", *base_args(tmp_path), "--dry-run"]) == 0, capsys.readouterr().err
    assert "would start at step 0 of 200" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_a_dry_run_of_an_existing_project_leaves_it_as_it_was(tmp_path: Path, capsys):
    make_dataset(tmp_path / "ds")
    publish_state(tmp_path)
    before = sorted(p.relative_to(tmp_path / "runs") for p in (tmp_path / "runs").rglob("*"))
    assert main(["train", *base_args(tmp_path), "--dry-run"]) == 0, capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path / "runs") for p in (tmp_path / "runs").rglob("*")) == before


def test_a_dry_run_refused_for_no_gpu_creates_no_storage_folder(tmp_path: Path, capsys):
    if _has_cuda():
        pytest.skip("this machine has a GPU")
    make_dataset(tmp_path / "ds")
    argv = ["train", "--dataset", str(tmp_path / "ds"), "--storage", str(tmp_path / "runs" / "deeper"),
            "--work-dir", str(tmp_path / "w"), "--project-name", "x", "--dry-run"]
    assert main(argv) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
