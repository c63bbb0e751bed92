"""A .txt that is not text (a zip's zeros, a NUL-filled file) or is far too large is skipped by name, never printed."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.dataset.validate import MAX_CAPTION_BYTES, CaptionNotRead, read_caption, validate_folder

from dataset_builders import png_bytes, write_caption, write_image


def _no_binary(report) -> None:
    for text in (report.to_text(), report.to_markdown(), report.model_dump_json()):
        assert "\x00" not in text and "\\u0000" not in text
        assert len(text) < 20_000
    assert all("\x00" not in i.caption for i in report.images)


@pytest.mark.parametrize("size", [1024, 7])
def test_a_nul_filled_caption_is_skipped_as_not_text(tmp_path: Path, size: int):
    write_image(tmp_path / "a.png"), (tmp_path / "a.txt").write_bytes(b"\0" * size)
    write_image(tmp_path / "b.png"), write_caption(tmp_path / "b.txt", "1girl, solo")
    report = validate_folder(tmp_path)
    assert [(p.file, p.code, p.verdict) for p in report.problems] == [("a.txt", "not-text", "skipped")]
    assert report.problems[0].reason.startswith("not a text file")
    assert "a.txt: not a text file" in report.to_text()
    assert {i.path: i.caption for i in report.images} == {"a.png": "", "b.png": "1girl, solo"}
    assert [(w.file, w.code) for w in report.warnings if "caption" in w.code] == [("a.png", "caption-not-read")]
    assert report.tag_frequency == {"1girl": 1, "solo": 1}
    _no_binary(report)


def test_binary_bytes_in_a_caption_are_not_text(tmp_path: Path):
    (tmp_path / "c.txt").write_bytes(b"1girl, \x01\x02\x03 smile")
    with pytest.raises(CaptionNotRead) as caught:
        read_caption(tmp_path / "c.txt")
    assert caught.value.code == "not-text"


def test_a_caption_over_the_limit_is_skipped_without_being_read_whole(tmp_path: Path):
    write_image(tmp_path / "a.png")
    big = tmp_path / "a.txt"
    with big.open("wb") as f:  # sparse: 1 GiB on paper; reading it whole would take seconds and the memory
        f.truncate(1024**3)
    report = validate_folder(tmp_path)
    assert [(p.file, p.code) for p in report.problems] == [("a.txt", "caption-too-large")]
    assert report.problems[0].reason.startswith("1024.0 MiB, over the 64 KiB a caption may have")
    assert report.images[0].caption == ""
    _no_binary(report)
    # Text just under the limit is still a caption.
    write_caption(big, "tag, " * ((MAX_CAPTION_BYTES - 10) // 5))
    assert read_caption(big)[1] == "utf-8"


def test_a_zip_of_zeros_named_like_a_caption_never_reaches_the_report(tmp_path: Path):
    """The new-user test: 50 MB of zeros as r0.txt printed 26 MB of NUL bytes under 'Top tags:'."""
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("r0.png", png_bytes())
        zf.writestr("r0.txt", b"\0" * (MAX_CAPTION_BYTES + 1))
        zf.writestr("r1.png", png_bytes((300, 256)))
        zf.writestr("r1.txt", b"\0" * 1024)
    report = prepare_dataset(str(archive), tmp_path / "work")
    assert sorted((p.file, p.code) for p in report.problems) == [("r0.txt", "caption-too-large"), ("r1.txt", "not-text")]
    assert report.tag_frequency == {} and all(i.caption == "" for i in report.images)
    _no_binary(report)
    assert "\\u0000" not in json.dumps(report.model_dump(mode="json"))
