"""Under a real Prefect server: a train refused before training (no GPU here) leaves no empty folder in storage."""

from __future__ import annotations

import pytest

from anima_lora_flow.cli import build_parser, config_from_args
from anima_lora_flow.errors import UserInputError

from test_cli_resume import make_dataset  # tests/ is on the path (its conftest)


def test_a_train_refused_for_no_gpu_leaves_no_project_folder(prefect_harness, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from anima_lora_flow.flows.train_lora import train_lora

    make_dataset(tmp_path / "ds")
    argv = ["train", "--dataset", str(tmp_path / "ds"), "--storage", str(tmp_path / "runs"),
            "--work-dir", str(tmp_path / "w"), "--project-name", "x"]
    config = config_from_args(build_parser().parse_args(argv))
    with pytest.raises(UserInputError, match="no CUDA GPU"):
        train_lora(config=config)
    assert not (tmp_path / "runs").exists()
