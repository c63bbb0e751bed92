"""Captions past the text window are announced, never cut silently: by the validator (exact with the model's
tokenizers, else an estimate that says so) and by the cache stage, which names the images and the tokens lost.

The tiny model's window is 16 tokens (its conditioner's min_sequence_length), so short captions overflow it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from anima_lora_flow.cli import main
from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.core.caption_tokens import load_caption_tokenizers
from anima_lora_flow.dataset.caption_tokenizers import find_caption_tokenizers
from anima_lora_flow.dataset.validate import validate_folder
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.cache import build_cache

LONG = ", ".join(["long blue hair"] * 5)  # 15 words + 4 commas: 19 Qwen3 tokens, 20 T5 tokens (with </s>)
SHORT = "1girl, solo"
CUT = "caption is 19 Qwen3 tokens (20 T5 tokens): the text encoder reads 16, so its last 4 are cut and not trained; shorten it"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "ds"
    root.mkdir()
    for name, caption in (("long", LONG), ("short", SHORT)):
        Image.new("RGB", (256, 256), (len(name) * 30, 80, 120)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(caption)
    return root


def test_the_tiny_tokenizers_count_like_the_encoder(tiny_model):
    tokenizers = load_caption_tokenizers(tiny_model)
    assert tokenizers.window == 16 and tokenizers.cut(LONG) == (19, 20, 4) and tokenizers.cut(SHORT) == (3, 4, 0)


def test_counts_read_from_tokenizer_json_equal_transformers(tiny_model):
    """The validator reads tokenizer.json without transformers (seconds of import); the trainer's encoder
    uses transformers' AutoTokenizer: both must count the same tokens, special tokens included."""
    from transformers import AutoTokenizer

    tokenizers = load_caption_tokenizers(tiny_model)
    qwen = AutoTokenizer.from_pretrained(tiny_model / "tokenizer", local_files_only=True)
    t5 = AutoTokenizer.from_pretrained(tiny_model / "t5_tokenizer", local_files_only=True)
    for caption in (LONG, SHORT, "", "1girl,solo , smile. UNKNOWN-word 日本語"):
        expected = (len(qwen([caption]).input_ids[0]), len(t5([caption]).input_ids[0]))
        assert tokenizers.count(caption) == expected, caption


def test_validator_counts_exactly_with_the_models_tokenizers(dataset: Path, tiny_model, tmp_path: Path):
    report = prepare_dataset(str(dataset), tmp_path / "work", models_dir=tiny_model)
    assert [(w.file, w.verdict, w.reason) for w in report.warnings if w.code == "long-caption"] == [("long.txt", "trained", CUT)]
    assert f"[trained] long.txt: {CUT}" in report.to_text()


def test_validator_without_tokenizers_says_its_count_is_an_estimate(tmp_path: Path):
    from PIL import Image

    Image.new("RGB", (256, 256)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(", ".join(f"tag_{i}_long_name" for i in range(60)))
    [warning] = [w for w in validate_folder(tmp_path).warnings if w.code == "long-caption"]
    assert warning.reason.startswith("caption is about ") and "(an estimate: no tokenizer here; pass --models-dir" in warning.reason


def test_a_models_dir_without_tokenizers_is_refused(dataset: Path, tmp_path: Path, capsys):
    with pytest.raises(UserInputError, match="has no usable tokenizers"):
        find_caption_tokenizers(tmp_path)
    assert main(["validate", str(dataset), "--work-dir", str(tmp_path / "w"), "--models-dir", str(tmp_path / "nothing")]) == 2
    assert "--models-dir" in capsys.readouterr().err


def test_cache_stage_names_the_images_and_the_tokens_lost(items, tiny_model, tmp_path: Path, caplog):
    long_items = [dataclasses.replace(items[0], caption=LONG), dataclasses.replace(items[1], caption=LONG), items[2]]
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.trainer.cache"):
        build_cache(long_items, tiny_model, tmp_path / "work", torch.device("cpu"), torch.float32)
    cut = [r.getMessage() for r in caplog.records if "are cut" in r.getMessage()]
    assert cut == [f"{items[0].image_path}, {items[1].image_path}: {CUT}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="anima_lora_flow.trainer.cache"):  # cached contexts: still announced
        build_cache(long_items, tiny_model, tmp_path / "work", torch.device("cpu"), torch.float32)
    assert [r.getMessage() for r in caplog.records if "are cut" in r.getMessage()] == cut
