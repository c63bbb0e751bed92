"""Two identical runs write byte-identical LoRA and state files (no metadata order or time stamps in them)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import torch
from safetensors import safe_open

from anima_lora_flow.trainer.events import read_events
from anima_lora_flow.trainer.lora import reproducible_safetensors
from anima_lora_flow.trainer.run import TrainJob

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_identical_runs_write_identical_bytes(tmp_path, items, tiny_model, tiny_config):
    # Each run is its own process: the safetensors writer's metadata order changed from process to process.
    outputs = []
    for name in ("first", "second"):
        config = tiny_config(save_kohya_lora=True, save_every_n_epochs=1)
        job = TrainJob(config, [i.to_json() for i in items], str(tiny_model), str(tmp_path / "work"), str(tmp_path / name))
        cmd = [sys.executable, "-m", "anima_lora_flow.trainer", "--job", str(job.save(tmp_path / f"{name}.json")),
               "--events", str(tmp_path / f"{name}.jsonl"), "--no-progress"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(tmp_path / name)
    first, second = (_hashes(folder) for folder in outputs)
    kinds = {path.rsplit(".", 1)[-1] for path in first}
    assert {"safetensors", "pt", "json"} <= kinds  # LoRAs (comfy and kohya), state tensors, progress
    assert any(path.startswith("state/") for path in first) and len(first) >= 8
    assert first == second
    final = list(read_events(tmp_path / "first.jsonl"))[-1].lora
    with safe_open(final, "pt") as f:
        meta = f.metadata()
    assert meta["ss_mixed_precision"] == "no" and meta["ss_optimizer"].startswith("torch.optim.adamw.AdamW(")


def test_metadata_order_does_not_change_the_bytes():
    tensors = {"b": torch.ones(3), "a": torch.zeros(2, dtype=torch.bfloat16)}
    meta = {f"key{i}": str(i) for i in range(30)}
    one = reproducible_safetensors(tensors, meta)
    assert one == reproducible_safetensors(tensors, dict(reversed(meta.items())))
    assert int.from_bytes(one[:8], "little") % 8 == 0
    from safetensors.torch import load

    loaded = load(one)
    assert torch.equal(loaded["b"], tensors["b"]) and torch.equal(loaded["a"], tensors["a"])
