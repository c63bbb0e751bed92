"""Resume selection: newest verified state, refusal on changed settings, skipping broken uploads."""

from __future__ import annotations

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.resume import ResumeRefusedError, find_resume_point, state_extra
from anima_lora_flow.storage import RunStore, resolve_location


def _publish(store, tmp_path, step, cfg, dataset_fp="d"):
    folder = tmp_path / f"s{step}"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"a" * step)
    store.publish_state(
        folder, step, epoch=1, fingerprint=cfg.fingerprint(dataset_fp),
        extra=state_extra(cfg.training_fields(), dataset_fp),
    )


def _find(store, cfg, tmp_path, dataset_fp="d", restart=False):
    return find_resume_point(
        store, fingerprint=cfg.fingerprint(dataset_fp), training_fields=cfg.training_fields(),
        dataset_fingerprint=dataset_fp, download_to=tmp_path / "dl", restart=restart,
    )


@pytest.fixture
def store(tmp_path):
    return RunStore(resolve_location(str(tmp_path / "runs")), "p")


def test_newest_matching_state_is_downloaded(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    _publish(store, tmp_path, 20, cfg)
    point = _find(store, cfg, tmp_path)
    assert point.step == 20
    assert (point.local_dir / "adapter.safetensors").read_bytes() == b"a" * 20


def test_truncated_upload_is_never_chosen(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    _publish(store, tmp_path, 20, cfg)
    with store.fs.open(store.path("state/000000020/adapter.safetensors"), "wb") as fh:
        fh.write(b"a" * 5)
    point = _find(store, cfg, tmp_path)
    assert point.step == 10
    assert "step 20" in point.skipped[0]


def test_changed_learning_rate_refuses_and_names_it(store, tmp_path):
    _publish(store, tmp_path, 10, TrainingConfig(dataset="x"))
    with pytest.raises(ResumeRefusedError, match=r"learning_rate: 0.0001 -> 0.0003.*--restart"):
        _find(store, TrainingConfig(dataset="x", learning_rate=3e-4), tmp_path)


def test_changed_dataset_refuses(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg, dataset_fp="d1")
    with pytest.raises(ResumeRefusedError, match="dataset's images or captions"):
        _find(store, cfg, tmp_path, dataset_fp="d2")


def test_restart_archives_instead_of_deleting(store, tmp_path):
    cfg = TrainingConfig(dataset="x")
    _publish(store, tmp_path, 10, cfg)
    point = _find(store, TrainingConfig(dataset="x", learning_rate=3e-4), tmp_path, restart=True)
    assert point.state is None and "moved to" in point.skipped[0]
    assert store.list_states() == []
    assert store.listdir("archive")
