"""Links in a dataset folder never make the validator read outside it; each unread entry is named in the report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anima_lora_flow.dataset.validate import validate_folder

from dataset_builders import write_caption, write_image

SECRET = "root:x:0:0:secret-password-line"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside the dataset that links point at: a 'password file' and a folder of images."""
    (tmp_path / "outside").mkdir()
    write_caption(tmp_path / "outside" / "passwd", SECRET)
    write_image(tmp_path / "outside" / "pics" / "p.png", size=(300, 300))
    write_caption(tmp_path / "outside" / "pics" / "p.txt", SECRET)
    return tmp_path / "outside"


def test_a_caption_linked_outside_the_root_is_never_read(tmp_path: Path, outside: Path):
    ds = tmp_path / "ds"
    write_image(ds / "g0.png")
    os.symlink(outside / "passwd", ds / "g0.txt")
    report = validate_folder(ds)
    assert SECRET not in report.model_dump_json() and SECRET not in report.to_text() and SECRET not in report.to_markdown()
    assert [(p.file, p.code, p.verdict) for p in report.problems] == [("g0.txt", "link-outside", "skipped")]
    assert "outside the dataset folder: not read" in report.problems[0].reason
    assert report.images[0].caption == "" and "g0.txt: a link to a file outside the dataset folder" in report.to_text()
    assert [(w.file, w.code) for w in report.warnings if "caption" in w.code] == [("g0.png", "caption-not-read")]


def test_an_image_linked_outside_and_a_linked_folder_are_skipped_by_name(tmp_path: Path, outside: Path):
    ds = tmp_path / "ds"
    write_image(ds / "a.png"), write_caption(ds / "a.txt", "1girl")
    os.symlink(outside / "pics" / "p.png", ds / "b.png")
    os.symlink(outside / "pics", ds / "5_pics")
    os.symlink(ds / "a.txt", ds / "inside.txt")  # inside the root: harmless, read like a file
    write_image(ds / "inside.png", size=(256, 300))
    os.symlink(ds / "deleted.txt", ds / "gone.txt")
    report = validate_folder(ds)
    assert {p.file: p.code for p in report.problems} == {"5_pics/": "linked-folder", "b.png": "link-outside", "gone.txt": "broken-link"}
    assert {i.path: i.caption for i in report.images} == {"a.png": "1girl", "inside.png": "1girl"}
    assert SECRET not in report.model_dump_json()


def test_a_linked_root_is_read_and_links_into_it_stay_allowed(tmp_path: Path):
    real = tmp_path / "real"
    write_image(real / "a.png"), write_caption(real / "a.txt", "solo")
    os.symlink(real, tmp_path / "alias")
    report = validate_folder(tmp_path / "alias")
    assert [(i.path, i.caption) for i in report.images] == [("a.png", "solo")] and report.problems == []


def test_a_fifo_named_like_a_caption_is_not_read(tmp_path: Path):
    """Reading a fifo would block forever."""
    ds = tmp_path / "ds"
    write_image(ds / "a.png")
    os.mkfifo(ds / "a.txt")
    report = validate_folder(ds)
    assert [(p.file, p.code) for p in report.problems] == [("a.txt", "not-a-file")]
