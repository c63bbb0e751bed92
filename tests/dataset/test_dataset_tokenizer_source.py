"""`train` (its dataset stage) and `plan` count caption tokens with the config's models_dir, as `validate` does.

Before, both called prepare_dataset without models_dir/base_model, so a long caption was counted exactly
only when the default model happened to be downloaded, and a models_dir without tokenizers went unnoticed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anima_lora_flow.cli import main
from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.prepare import dataset_report
from anima_lora_flow.trainer.tiny import QWEN_SPECIALS, T5_SPECIALS, _write_tokenizer

from dataset_builders import write_caption, write_image

LONG = ", ".join(["long blue hair"] * 5)  # 19 Qwen3 tokens, 20 T5 tokens in the tiny vocabulary


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_image(tmp_path / "ds" / "long.png"), write_caption(tmp_path / "ds" / "long.txt", LONG)
    return tmp_path / "ds"


@pytest.fixture
def tokenizers_only(tmp_path: Path) -> Path:
    """The parts of a Diffusers-format Anima folder the caption count reads: both tokenizers and the window (16)."""
    folder = tmp_path / "model"
    _write_tokenizer(folder / "tokenizer", QWEN_SPECIALS, t5_style=False)
    _write_tokenizer(folder / "t5_tokenizer", T5_SPECIALS, t5_style=True)
    (folder / "text_conditioner").mkdir()
    (folder / "text_conditioner" / "config.json").write_text(json.dumps({"min_sequence_length": 16}))
    return folder


def test_the_dataset_stage_counts_with_the_configs_models_dir(dataset: Path, tokenizers_only: Path, tmp_path: Path):
    config = TrainingConfig(dataset=str(dataset), work_dir=str(tmp_path / "w"), models_dir=str(tokenizers_only))
    [warning] = [w for w in dataset_report(config).warnings if w.code == "long-caption"]
    assert warning.reason.startswith("caption is 19 Qwen3 tokens (20 T5 tokens): the text encoder reads 16")


def test_a_models_dir_without_tokenizer_folders_is_left_to_the_models_stage(dataset: Path, tmp_path: Path):
    # The models stage refuses it, after the resume check (tests/flows/test_refusal_before_download.py).
    config = TrainingConfig(dataset=str(dataset), work_dir=str(tmp_path / "w"), models_dir=str(tmp_path / "nothing"))
    assert dataset_report(config).trainable_count == 1


def test_plan_reads_the_models_dirs_tokenizers(dataset: Path, tokenizers_only: Path, tmp_path: Path, capsys):
    (tokenizers_only / "tokenizer" / "tokenizer.json").write_text("{damaged")
    plan = ["plan", str(dataset), "--gpu", "T4", "--work-dir", str(tmp_path / "w"), "--models-dir", str(tokenizers_only)]
    assert main(plan) == 2 and "has no usable tokenizers" in capsys.readouterr().err
