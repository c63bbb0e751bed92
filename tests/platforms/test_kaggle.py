"""Kaggle: a previous version's run store attached under /kaggle/input is picked up and continued."""

from __future__ import annotations

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.platforms.kaggle import find_previous_run_store, import_previous_run_store
from anima_lora_flow.runner.resume import find_resume_point, state_extra
from anima_lora_flow.storage import RunStore, resolve_location


def _previous_version(input_root, tmp_path, cfg, steps):
    """A run store as an earlier Kaggle version left it in its output, now attached read-only."""
    old = RunStore(resolve_location(str(input_root / "my-notebook-output" / "anima-runs")), cfg.project_name)
    for step in steps:
        folder = tmp_path / f"s{step}"
        folder.mkdir()
        (folder / "adapter.safetensors").write_bytes(b"w" * step)
        old.publish_state(folder, step, epoch=1, fingerprint=cfg.fingerprint("d"),
                          extra=state_extra(cfg.training_fields(), "d"))
    return old


def test_previous_run_store_is_found_and_continued(tmp_path):
    cfg = TrainingConfig(dataset="d", project_name="mylora")
    input_root = tmp_path / "kaggle" / "input"
    _previous_version(input_root, tmp_path, cfg, [100, 200])
    assert find_previous_run_store("mylora", input_root).name == "mylora"
    assert find_previous_run_store("other", input_root) is None

    working = RunStore(resolve_location(str(tmp_path / "kaggle" / "working" / "anima-runs")), "mylora")
    note = import_previous_run_store(working, input_root)
    assert "step 200" in note
    point = find_resume_point(working, fingerprint=cfg.fingerprint("d"), training_fields=cfg.training_fields(),
                              dataset_fingerprint="d", download_to=tmp_path / "dl")
    assert point.step == 200
    # A second session that already has its own states does not re-import.
    assert import_previous_run_store(working, input_root) is None
