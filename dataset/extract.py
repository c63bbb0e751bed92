"""Safe archive extraction: no zip-slip, no links, no bombs, no junk, into a fresh folder only."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from anima_lora_flow.dataset.formats import is_junk
from anima_lora_flow.dataset.report import DatasetError

_CHUNK = 1 << 20
_KOHYA_FOLDER = re.compile(r"^\d+_.+")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ExtractLimits:
    """Refuse archives past these sizes. The ratio applies only past `ratio_floor` bytes."""

    max_total_bytes: int = 20 * 1024**3
    max_files: int = 100_000
    max_ratio: float = 200.0  # images barely compress; a 200:1 archive is a bomb, not a dataset
    ratio_floor: int = 64 * 1024**2  # small archives of text captions may compress well: don't judge them


@dataclass(frozen=True)
class _Entry:
    """A regular file to extract: its archive name, safe relative path and declared sizes."""

    name: str
    relpath: PurePosixPath
    size: int
    compressed: int


def is_archive(path: Path) -> bool:
    """True for a zip or tar file, judged by content (downloaded files may have no extension)."""
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def safe_extract(archive: Path, dest: Path, limits: ExtractLimits | None = None) -> Path:
    """Extract `archive` into `dest` (which must not exist yet) and return `dest`.

    Writes into a sibling temporary folder first and renames it, so `dest` is complete or absent.

    Raises:
        DatasetError: the archive is unreadable, unsafe, too large or `dest` already exists.
    """
    limits = limits or ExtractLimits()
    if dest.exists():
        raise DatasetError(f"refusing to extract over {dest}: it already exists; pick another work dir")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with _open_archive(archive) as (entries, open_entry):
            planned = _plan(entries, archive, limits)
            _write_all(planned, open_entry, tmp, archive, limits)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


@contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[list[tuple[str, bool, int, int]], Callable[[str], IO[bytes]]]]:
    """Yield (entries as (name, is_regular_file, size, compressed), opener) for a zip or a tar."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = {i.filename: i for i in zf.infolist()}
                if len(infos) != len(zf.infolist()):  # the dict would silently keep only the last copy
                    raise DatasetError(f"{archive.name} holds the same file name twice; re-create the archive with one copy of each file")
                entries = [(i.filename, _zip_kind(i, archive), i.file_size, i.compress_size) for i in infos.values()]
                yield entries, lambda name: zf.open(infos[name])
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = {m.name: m for m in tf.getmembers()}
                entries = [(m.name, _tar_kind(m, archive), m.size, m.size) for m in members.values()]
                yield entries, lambda name: tf.extractfile(members[name])
        else:
            raise DatasetError(f"{archive.name} is not a zip or tar archive; pass a .zip or a folder of images")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zipfile.LargeZipFile) as exc:
        raise DatasetError(f"{archive.name} is damaged ({exc}); re-create the archive and try again") from exc


def _zip_kind(info: zipfile.ZipInfo, archive: Path) -> bool:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DatasetError(f"{archive.name} is unsafe: {info.filename!r} is a symbolic link; zip the files themselves")
    return not info.is_dir()


def _tar_kind(member: tarfile.TarInfo, archive: Path) -> bool:
    if member.issym() or member.islnk():
        raise DatasetError(f"{archive.name} is unsafe: {member.name!r} is a link; archive the files themselves")
    if not (member.isfile() or member.isdir()):
        raise DatasetError(f"{archive.name} is unsafe: {member.name!r} is a device or fifo; archive only images and captions")
    return member.isfile()


def _safe_relpath(name: str, archive: Path) -> PurePosixPath:
    """The entry's path inside the target, or DatasetError for absolute or `..` paths."""
    text = name.replace("\\", "/")  # zips made on Windows may use backslashes
    path = PurePosixPath(text)
    if text.startswith("/") or _WINDOWS_DRIVE.match(text) or ".." in path.parts:
        raise DatasetError(f"{archive.name} is unsafe: entry {name!r} points outside the folder (zip-slip); re-create the archive")
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


def _plan(entries: list[tuple[str, bool, int, int]], archive: Path, limits: ExtractLimits) -> list[_Entry]:
    """Check every entry and the totals from the directory before writing anything."""
    planned = []
    for name, is_file, size, compressed in entries:
        relpath = _safe_relpath(name, archive)
        if is_file and relpath.parts and not is_junk(relpath):
            planned.append(_Entry(name, relpath, size, compressed))
    total = sum(e.size for e in planned)
    if len(planned) > limits.max_files:
        raise DatasetError(f"{archive.name} has {len(planned)} files, over the limit of {limits.max_files}; split the dataset")
    if total > limits.max_total_bytes:
        raise DatasetError(f"{archive.name} unpacks to {total} bytes, over the limit of {limits.max_total_bytes}; split the dataset")
    packed = max(1, sum(e.compressed for e in planned))
    if total > limits.ratio_floor and total / packed > limits.max_ratio:
        raise DatasetError(f"{archive.name} looks like a zip bomb ({total / packed:.0f}:1 compression); re-create the archive")
    if len({str(e.relpath).lower() for e in planned}) != len(planned):
        raise DatasetError(f"{archive.name} holds the same file name twice (perhaps differing in case); rename one of them")
    return _flatten(planned)


def _flatten(planned: list[_Entry]) -> list[_Entry]:
    """Drop a single top-level folder that holds everything, unless it is a kohya `N_name` folder."""
    tops = {e.relpath.parts[0] for e in planned}
    if len(tops) != 1 or any(len(e.relpath.parts) == 1 for e in planned) or _KOHYA_FOLDER.match(next(iter(tops))):
        return planned
    return [_Entry(e.name, PurePosixPath(*e.relpath.parts[1:]), e.size, e.compressed) for e in planned]


def _write_all(planned: list[_Entry], open_entry: Callable[[str], IO[bytes]], target: Path, archive: Path, limits: ExtractLimits) -> None:
    """Stream each entry to disk, counting real bytes: a header that lies about sizes must not win."""
    written = 0
    for entry in planned:
        out = target.joinpath(*entry.relpath.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open_entry(entry.name) as src, open(out, "xb") as dst:
            written = _copy_counted(src, dst, written, limits.max_total_bytes, archive)


def _copy_counted(src: IO[bytes], dst: IO[bytes], written: int, limit: int, archive: Path) -> int:
    while chunk := src.read(_CHUNK):
        written += len(chunk)
        if written > limit:
            raise DatasetError(f"{archive.name} unpacks to more than {limit} bytes (its header understates it); refusing it")
        dst.write(chunk)
    return written
