"""Storage is resolved and probed once per run, at the mount; later stages open the StoreRef it returns."""

from __future__ import annotations

from types import SimpleNamespace

from prefect.logging import disable_run_logger
from prefect.utilities.hashing import hash_objects

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner import prepare
from anima_lora_flow.tasks.resume import check_resume_task
from anima_lora_flow.tasks.storage import mount_storage_task, record_run_task, store_json_task


def test_the_stages_after_the_mount_resolve_nothing(tmp_path, monkeypatch):
    resolved = []
    real = prepare.resolve_storage
    monkeypatch.setattr(prepare, "resolve_storage", lambda *a, **k: (resolved.append(a), real(*a, **k))[1])
    config = TrainingConfig(dataset="d", storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))

    storage = mount_storage_task.fn(config, "r1")
    with disable_run_logger():
        assert check_resume_task.fn(config, SimpleNamespace(fingerprint="fp"), storage=storage).step == 0
    store_json_task.fn(config, "plan.json", {"steps": 1}, storage=storage)
    record_run_task.fn(config, {"run_id": "r1", "outcome": "completed"}, storage=storage)

    assert len(resolved) == 1
    store = storage.open()
    assert store.read_json("plan.json") == {"steps": 1} and [r["run_id"] for r in store.runs()] == ["r1"]
    assert store.root == str(tmp_path / "runs" / config.project_name)


def test_a_store_ref_is_plain_data_prefect_can_hash(tmp_path):
    """Prefect hashes every task input for its cache key; a filesystem object would log an error per task."""
    config = TrainingConfig(dataset="d", storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))
    storage = mount_storage_task.fn(config, "r1")
    assert hash_objects(storage, raise_on_failure=True) == hash_objects(mount_storage_task.fn(config, "r2"))
    assert storage.open().fs is prepare.open_run_store(config).fs


def test_a_dry_run_of_the_flow_resolves_its_storage_once(prefect_harness, tmp_path, monkeypatch):
    from anima_lora_flow.demo import demo_config
    from anima_lora_flow.flows.train_lora import train_lora

    resolved = []
    real = prepare.resolve_storage
    monkeypatch.setattr(prepare, "resolve_storage", lambda *a, **k: (resolved.append(a), real(*a, **k))[1])
    config = demo_config(tmp_path, storage=str(tmp_path / "runs")).model_copy(
        update={"models_dir": str(tmp_path / "no-models-here"), "project_name": "dry"})
    assert train_lora(config=config, dry_run=True)["outcome"] == "dry-run"
    assert resolved == [(config.storage,)]
