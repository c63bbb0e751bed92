"""The best epoch in storage: read from each LoRA's validation metadata, kept when epochs are pruned, named by status."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.status import status_text


def _lora(store: RunStore, name: str, **meta) -> None:
    local = store.scratch / name
    save_file({"w": torch.zeros(2)}, str(local), metadata={k: str(v) for k, v in meta.items()})
    store.publish_file(local, f"checkpoints/{name}")


def _store(tmp_path) -> RunStore:
    store = RunStore(resolve_location(str(tmp_path / "runs")), "p")
    store.scratch = tmp_path / "scratch"  # where the files are written before they are published
    store.scratch.mkdir()
    return store


def test_pruning_keeps_the_best_epoch_and_status_names_it(tmp_path):
    store = _store(tmp_path)
    for epoch, loss in ((1, 0.5), (2, 0.2), (3, 0.4), (4, 0.3)):
        _lora(store, f"p-{epoch:06d}.safetensors", anima_validation_loss=loss, anima_validation_set="held-out, 2 images",
              ss_epoch=epoch)
    _lora(store, "p-000004.kohya.safetensors")  # a copy without metadata is no candidate
    _lora(store, "p-000005.safetensors", anima_validation_loss="nan", ss_epoch=5)  # a diverged epoch is never the best
    _lora(store, "p.safetensors", anima_validation_loss=0.25, ss_epoch=5)
    best = store.best_epoch()
    assert best == {"epoch": 2, "file": "p-000002.safetensors", "loss": 0.2, "set": "held-out, 2 images"}
    assert store.prune_checkpoints(1) == ["p-000001.safetensors", "p-000003.safetensors", "p-000004.safetensors"]
    assert [name for _, name in store.epoch_checkpoints()] == ["p-000002.safetensors", "p-000005.safetensors"]
    text = status_text(store)
    assert "best: p-000002.safetensors (epoch 2), lowest validation loss 0.2000 (held-out, 2 images)" in text


def test_the_final_lora_is_the_best_when_the_last_epoch_measured_lowest(tmp_path):
    store = _store(tmp_path)
    _lora(store, "p-000001.safetensors", anima_validation_loss=0.5, ss_epoch=1)
    _lora(store, "p.safetensors", anima_validation_loss=0.1, ss_epoch=2)
    assert store.best_epoch()["file"] == "p.safetensors" and store.best_epoch()["epoch"] == 2


def test_loras_without_a_validation_loss_name_no_best(tmp_path):
    store = _store(tmp_path)
    _lora(store, "p-000001.safetensors", ss_epoch=1)
    _lora(store, "p-000002.safetensors", ss_epoch=2)
    assert store.best_epoch() is None
    assert store.prune_checkpoints(1) == ["p-000001.safetensors"]
    assert "best:" not in status_text(store)
