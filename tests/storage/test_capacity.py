"""The run store's predicted size against free space: a full Drive or Kaggle's 20 GB stop the run early."""

from __future__ import annotations

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.storage import capacity, resolve_location


def test_prediction_grows_with_rank_and_kept_files():
    small = capacity.predicted_store_bytes(TrainingConfig(dataset="d", network_dim=8))
    big = capacity.predicted_store_bytes(TrainingConfig(dataset="d", network_dim=32, keep_last_states=4))
    assert big > 4 * small - 4 * capacity.SMALL_FILES
    # rank 20 defaults: 5 LoRA files + 2 states of 28.7M parameters each, about 1.3 GB
    assert 1.0e9 < capacity.predicted_store_bytes(TrainingConfig(dataset="d")) < 1.6e9


def test_kaggle_working_limit_is_enforced(tmp_path, monkeypatch):
    working = tmp_path / "kaggle" / "working"
    working.mkdir(parents=True)
    (working / "old_output.bin").write_bytes(b"x" * 1000)
    monkeypatch.setattr(capacity, "KAGGLE_WORKING", str(working))
    monkeypatch.setattr(capacity, "KAGGLE_WORKING_LIMIT", 500_000_000)
    loc = resolve_location(str(working / "runs"))
    assert capacity.free_bytes(loc) == 500_000_000 - 1000
    with pytest.raises(UserInputError, match=r"GiB free but this run needs about .*--keep-last-states"):
        capacity.check_capacity(loc, TrainingConfig(dataset="d"))
    assert capacity.check_capacity(loc, TrainingConfig(dataset="d", network_dim=1, save_last_n_epochs=1, keep_last_states=1)) > 0


def test_object_stores_are_not_guessed(memory_fs):
    assert capacity.free_bytes(resolve_location("memory://b/runs")) is None
