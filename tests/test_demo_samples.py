"""The demo samples: a new user's first run on a CPU ends with a grid (base model above, LoRA below) in storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from PIL import Image

from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.demo import demo_config
from anima_lora_flow.planner.preflight import check_supported
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location


@pytest.mark.slow  # about a minute; tests/flows/test_train_lora_flow.py checks the demo's grid artifact in CI
def test_the_demo_run_ends_with_a_sample_grid_in_storage(tmp_path):
    cfg = demo_config(tmp_path, epochs=1)
    check_supported(cfg)  # its prompt file and sizes pass the same preflight as a user's
    report = prepare_dataset(cfg.dataset, tmp_path / "intake", resolution=cfg.resolution, repeats=cfg.repeats)
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)
    events = []
    result = run_training_session(
        cfg, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=Path(cfg.models_dir),
        store=store, work_dir=Path(cfg.work_dir), run_id="r1", log=lambda line: None,
        on_event=lambda event, outcome: events.append(event),
    )  # fmt: skip
    assert result.outcome == "completed" and result.sampling_errors == []
    assert result.samples == [store.path("samples", "demo-step00000012.png")]
    grid = Image.open(result.samples[0])
    assert grid.width > 2 * 256 and grid.height > 2 * 256  # two prompts, two rows
    assert store.listdir("samples/base") and len(store.listdir("samples/base")) == 2
    samples = [e for e in events if e.event == "samples"]
    assert [e.prompts for e in samples] == [["demochar, 1girl, solo, smile", "demochar, outdoors, sky, flower"]]
