"""The train flow's dataset stage says which files it drops: a skipped image never goes unnoticed."""

from __future__ import annotations

import logging

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.tasks import dataset as dataset_tasks

from dataset_builders import write_caption, write_image


def test_skipped_files_are_named_with_the_way_to_see_them_all(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(dataset_tasks, "create_markdown_artifact", lambda **kw: None)
    folder = tmp_path / "set"
    for name in ("a", "b"):
        write_image(folder / f"{name}.png", size=(640, 480)), write_caption(folder / f"{name}.txt", "1girl")
    (folder / "bad.png").write_bytes(b"not an image at all")
    config = TrainingConfig(dataset=str(folder), work_dir=str(tmp_path / "w"))
    with caplog.at_level(logging.INFO, logger="anima_lora_flow.dataset"):
        report = dataset_tasks.prepare_dataset_task.fn(config)
    assert report.trainable_count == 2
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING).getMessage()
    assert warning.startswith("1 file(s) of the dataset are not trained: bad.png: ")
    assert f"`anima-lora validate {folder}` lists them all" in warning
    assert any("2 images will be trained" in r.getMessage() for r in caplog.records)
