"""README states the zip-bomb limits the code applies (ExtractLimits), and the code does what README says."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest

from anima_lora_flow.core.dataset_report import DatasetError
from anima_lora_flow.dataset.extract import ExtractLimits, safe_extract
from anima_lora_flow.dataset.intake import prepare_dataset

from dataset_builders import png_bytes

README = Path(__file__).resolve().parents[2] / "README.md"
LIMITS = ExtractLimits()


def _readme() -> str:
    return re.sub(r"\s+", " ", README.read_text())


def test_readme_states_the_extract_limits_of_the_code():
    text = _readme()
    ratio, floor = f"{LIMITS.max_ratio:.0f}", f"{LIMITS.ratio_floor // 1024**2} MiB"
    assert f"at most {LIMITS.max_files} files, {LIMITS.max_total_bytes // 1024**3} GiB unpacked" in text
    assert f"past {ratio} times their packed size add up to over {floor}" in text
    assert f"over {ratio} times its own file size and over {floor}" in text
    # The old promise (every entry past 200:1 refused) is not what the code does.
    assert "an entry that unpacks to over 200 times its packed size is refused" not in text


def _zeros_zip(path: Path, zeros: int, padding: int = 0) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.png", png_bytes())
        zf.writestr("big.png", b"\0" * zeros)
        if padding:  # incompressible: raises the whole archive's bound, so only the per-entry rule can refuse
            zf.writestr("pad.png", os.urandom(padding))
    return path


def test_zeros_past_the_ratio_but_under_the_floor_are_extracted_then_skipped(tmp_path: Path):
    """README: 'a smaller block past 200:1 ... is extracted, and then skipped by the validator as not an image'."""
    archive = _zeros_zip(tmp_path / "d.zip", 8 * 1024**2)
    info = zipfile.ZipFile(archive).getinfo("big.png")
    assert info.file_size / info.compress_size > LIMITS.max_ratio
    report = prepare_dataset(str(archive), tmp_path / "work")
    assert [i.path for i in report.images] == ["ok.png"]
    assert [(p.file, p.code, p.verdict) for p in report.problems] == [("big.png", "unreadable", "skipped")]


def test_zeros_past_the_floor_are_refused_before_a_byte_is_written(tmp_path: Path):
    whole = _zeros_zip(tmp_path / "whole.zip", LIMITS.ratio_floor + 1024**2)
    with pytest.raises(DatasetError, match=r"whole.zip looks like a zip bomb: it unpacks to over 200 times its size"):
        safe_extract(whole, tmp_path / "out")
    padded = _zeros_zip(tmp_path / "padded.zip", LIMITS.ratio_floor + 32 * 1024**2, padding=1024**2)
    assert padded.stat().st_size * LIMITS.max_ratio > LIMITS.ratio_floor + 33 * 1024**2  # the archive's own ratio passes
    with pytest.raises(DatasetError, match=r"padded.zip looks like a zip bomb: 'big.png' .* \(over 200:1"):
        safe_extract(padded, tmp_path / "out")
    assert not (tmp_path / "out").exists()
