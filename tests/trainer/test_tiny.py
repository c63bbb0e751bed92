"""The tiny random Anima: complete, loadable offline, deterministic, small and fast to build."""

from __future__ import annotations

import time

from transformers import AutoTokenizer

from anima_lora_flow.trainer.components import SUBFOLDERS, check_models_dir
from anima_lora_flow.trainer.tiny import build_tiny_model


def test_tiny_model_is_complete_and_loads_offline(tiny_model):
    check_models_dir(tiny_model)
    assert (tiny_model / "model_index.json").is_file()
    assert {p.name for p in tiny_model.iterdir() if p.is_dir()} >= set(SUBFOLDERS)
    total = sum(p.stat().st_size for p in tiny_model.rglob("*") if p.is_file())
    assert total < 8 * 2**20
    qwen = AutoTokenizer.from_pretrained(tiny_model / "tokenizer")
    t5 = AutoTokenizer.from_pretrained(tiny_model / "t5_tokenizer")
    assert qwen("").input_ids == []
    assert t5("").input_ids == [1]  # </s>, as T5 appends it
    assert t5("1girl, smile").input_ids[-1] == 1


def test_same_seed_same_bytes(tmp_path, tiny_model):
    start = time.monotonic()
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert time.monotonic() - start < 10
    for path in tiny_model.rglob("*.safetensors"):
        assert (again / path.relative_to(tiny_model)).read_bytes() == path.read_bytes(), path


def test_trainer_does_not_import_prefect():
    import subprocess
    import sys

    code = "import sys, anima_lora_flow.trainer.run, anima_lora_flow.trainer.__main__; sys.exit('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
