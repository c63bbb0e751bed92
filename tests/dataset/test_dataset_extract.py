"""Unsafe and bomb-like archives are refused before anything is written; good ones extract cleanly."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from anima_lora_flow.dataset.extract import LEFT_IN_ARCHIVE, ExtractLimits, _Entry, _open_archive, _write_all, safe_extract
from anima_lora_flow.dataset.intake import extract_to_work_dir, prepare_dataset
from anima_lora_flow.core.dataset_report import DatasetError

from dataset_builders import png_bytes


def make_zip(path: Path, entries: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_zip_slip_entry_is_refused(tmp_path: Path):
    archive = make_zip(tmp_path / "evil.zip", {"ok.png": png_bytes(), "../evil.png": png_bytes()})
    with pytest.raises(DatasetError, match="zip-slip"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.zip"]  # the partial folder was removed too


@pytest.mark.parametrize("name", ["/etc/evil.png", "C:/evil.png", "a\\..\\..\\evil.png"])
def test_absolute_and_backslash_paths_are_refused(tmp_path: Path, name: str):
    archive = make_zip(tmp_path / "evil.zip", {name: png_bytes()})
    with pytest.raises(DatasetError, match="points outside"):
        safe_extract(archive, tmp_path / "out")


def test_symlink_entry_is_refused(tmp_path: Path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.png", png_bytes())
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_links_are_refused(tmp_path: Path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(DatasetError, match="is a link"):
        safe_extract(archive, tmp_path / "out")


def test_bomb_like_archive_is_refused_by_size_ratio_and_count(tmp_path: Path):
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.png": b"\0" * (4 << 20)})
    with pytest.raises(DatasetError, match="unpacks to 4194304 bytes, over the limit of 1048576"):
        safe_extract(archive, tmp_path / "a", ExtractLimits(max_total_bytes=1 << 20))
    with pytest.raises(DatasetError, match="zip bomb"):
        safe_extract(archive, tmp_path / "b", ExtractLimits(ratio_floor=1 << 20))
    many = make_zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(11)})
    with pytest.raises(DatasetError, match="11 files, over the limit of 10"):
        safe_extract(many, tmp_path / "c", ExtractLimits(max_files=10))


def test_a_bomb_entry_hidden_by_incompressible_padding_is_refused(tmp_path: Path):
    """4 MiB of zeros beside 1 MiB of random bytes is 5:1 overall, but the zeros entry alone is ~1000:1.

    Scaled down from 2 GB of zeros + 12 MB of random (147:1 overall), which the whole-archive ratio let through.
    """
    archive = make_zip(tmp_path / "padded.zip", {"a.png": b"\0" * (4 << 20), "b.png": os.urandom(1 << 20)})
    limits = ExtractLimits(ratio_floor=1 << 20)
    with pytest.raises(DatasetError, match=r"padded.zip looks like a zip bomb: 'a.png' unpacks to 4194304\+ bytes from \d+ \(over 200:1"):
        safe_extract(archive, tmp_path / "out", limits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["padded.zip"]  # refused before writing: no partial folder left
    fine = make_zip(tmp_path / "fine.zip", {"a.png": os.urandom(1 << 20), "b.txt": b"1girl"})
    assert (safe_extract(fine, tmp_path / "ok", limits) / "a.png").stat().st_size == 1 << 20


def test_written_bytes_are_counted_while_extracting_whatever_the_plan_says(tmp_path: Path):
    """A plan that believed a header claiming 10 bytes is stopped by the bytes really written, mid-entry."""
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.png")
        info.size = 3 << 20
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    out = tmp_path / "out"
    out.mkdir()
    with _open_archive(archive) as (_, open_entry), pytest.raises(DatasetError, match="zip bomb: 'zeros.png'"):
        _write_all([_Entry("zeros.png", Path("zeros.png"), 10, 10)], open_entry, out, archive, ExtractLimits(ratio_floor=1 << 20))
    assert (out / "zeros.png").stat().st_size <= 1 << 20  # stopped at the first chunk past the bound, not at 3 MiB
    with _open_archive(archive) as (_, open_entry), pytest.raises(DatasetError, match="its header understates it"):
        _write_all([_Entry("zeros.png", Path("again.png"), 10, 10 << 20)], open_entry, out, archive, ExtractLimits(max_total_bytes=1 << 20))


def test_only_images_and_their_captions_are_extracted_and_the_rest_is_reported(tmp_path: Path):
    archive = make_zip(tmp_path / "d.zip", {
        "a.png": png_bytes(), "a.txt": b"1girl", "orphan.txt": b"no image", "c.gif": b"GIF89a", "c.txt": b"for the gif",
        "clip.mp4": os.urandom(4096), "notes.pdf": b"%PDF", "sub/d.png": png_bytes((256, 300)), "sub/d.txt": b"solo",
    })
    out = safe_extract(archive, tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        LEFT_IN_ARCHIVE, "a.png", "a.txt", "sub/d.png", "sub/d.txt",
    ]
    report = prepare_dataset(str(archive), tmp_path / "work")
    assert {i.path: i.caption for i in report.images} == {"a.png": "1girl", "sub/d.png": "solo"}
    assert {(p.file, p.code) for p in report.problems} == {("c.gif", "unsupported-format")}
    assert "(left in the archive)" in report.problems[0].reason
    assert {(w.file, w.code) for w in report.warnings if w.code not in ("subfolder", "upscaled")} == {
        ("orphan.txt", "orphan-caption"), ("clip.mp4", "ignored-file"), ("notes.pdf", "ignored-file"),
    }
    assert LEFT_IN_ARCHIVE not in report.to_text()


def test_lying_header_does_not_beat_the_limit(tmp_path: Path):
    """Central directory and local header claim 10 bytes for a 2 MiB entry."""
    archive = make_zip(tmp_path / "liar.zip", {"big.png": b"\0" * (2 << 20)})
    data = bytearray(archive.read_bytes())
    real = (2 << 20).to_bytes(4, "little")
    for offset in [i for i in range(len(data) - 3) if data[i : i + 4] == real]:
        data[offset : offset + 4] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError):
        safe_extract(archive, tmp_path / "out", ExtractLimits(max_total_bytes=1 << 20))
    assert not (tmp_path / "out").exists()


def test_gzip_tar_counts_real_bytes(tmp_path: Path):
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.png")
        info.size = 3 << 20
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(DatasetError, match="over the limit"):
        safe_extract(archive, tmp_path / "out", ExtractLimits(max_total_bytes=1 << 20))


def test_junk_is_skipped_and_single_top_folder_flattened(tmp_path: Path):
    archive = make_zip(tmp_path / "d.zip", {
        "my_set/a.png": png_bytes(), "my_set/a.txt": b"1girl", "my_set/.DS_Store": b"x",
        "my_set/Thumbs.db": b"x", "__MACOSX/my_set/._a.png": b"x", "my_set/": b"",
    })
    out = safe_extract(archive, tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.png", "a.txt"]


def test_single_kohya_folder_is_kept(tmp_path: Path):
    archive = make_zip(tmp_path / "d.zip", {"8_char/a.png": png_bytes(), "8_char/a.txt": b"char"})
    report = prepare_dataset(str(archive), tmp_path / "work")
    assert [(i.path, i.repeats) for i in report.images] == [("8_char/a.png", 8)]


def test_extraction_is_content_addressed_and_never_overwrites(tmp_path: Path):
    first = make_zip(tmp_path / "one.zip", {"a.png": png_bytes(), "a.txt": b"one"})
    second = make_zip(tmp_path / "two.zip", {"a.png": png_bytes(), "a.txt": b"two"})
    work = tmp_path / "work"
    root_one, root_two = extract_to_work_dir(first, work), extract_to_work_dir(second, work)
    assert root_one != root_two and root_one.parent == root_two.parent == work / "datasets"
    assert (root_one / "a.txt").read_text() == "one" and (root_two / "a.txt").read_text() == "two"
    assert extract_to_work_dir(first, work) == root_one  # reused, not extracted again
    with pytest.raises(DatasetError, match="already exists"):
        safe_extract(first, root_two)


def test_zip_source_extracts_into_work_dir_not_next_to_the_zip(tmp_path: Path):
    archive = make_zip(tmp_path / "d.zip", {"a.png": png_bytes(), "a.txt": b"1girl"})
    work = tmp_path / "work"
    report = prepare_dataset(str(archive), work)
    assert Path(report.root).is_relative_to(work)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zip", "work"]
    assert report.source == str(archive) and report.trainable_count == 1


@pytest.mark.parametrize("content", [b"PK\x03\x04 garbage", b"just text", zipfile.ZipFile.__name__.encode()])
def test_unreadable_archive_is_an_error(tmp_path: Path, content: bytes):
    bad = tmp_path / "data.zip"
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match="data.zip is not a readable archive"):
        prepare_dataset(str(bad), tmp_path / "work")


def test_a_file_that_is_no_archive_is_an_error(tmp_path: Path):
    other = tmp_path / "data.bin"
    other.write_bytes(b"just bytes")
    with pytest.raises(DatasetError, match="neither a folder nor a .zip"):
        prepare_dataset(str(other), tmp_path / "work")


def test_damaged_zip_is_an_error(tmp_path: Path):
    archive = make_zip(tmp_path / "d.zip", {"a.png": png_bytes((256, 256)) * 4}, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    data[100:200] = b"\xff" * 100  # corrupt the stored entry's bytes: its CRC no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="damaged"):
        safe_extract(archive, tmp_path / "out")


def test_zip_with_the_same_entry_twice_is_refused_not_silently_halved(tmp_path: Path):
    archive = tmp_path / "dupnames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("img0.png", png_bytes())
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("img0.png", png_bytes((256, 256)))
    with pytest.raises(DatasetError, match="dupnames.zip holds the same file name twice; re-create the archive"):
        prepare_dataset(str(archive), tmp_path / "work")
