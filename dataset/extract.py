"""Safe archive extraction: no zip-slip, no links, no bombs, no junk, into a fresh folder only."""

from __future__ import annotations

import json
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

from ..core.dataset_report import DatasetError
from .formats import is_caption, is_image, is_junk

_CHUNK = 1 << 20
_KOHYA_FOLDER = re.compile(r"^\d+_.+")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
LEFT_IN_ARCHIVE = ".left-in-archive.json"  # a dot-file: the validator never lists it


@dataclass(frozen=True)
class ExtractLimits:
    """Refuse archives past these sizes, checked on the headers and again on the bytes really written.

    The ratio is judged per entry, so incompressible padding beside a block of zeros hides nothing:
    bytes that entries unpack to beyond max_ratio times their packed size may add up to `ratio_floor`
    at most, and so may the whole archive beyond max_ratio times its file size.
    """

    max_total_bytes: int = 20 * 1024**3
    max_files: int = 100_000
    max_ratio: float = 200.0  # images barely compress; a 200:1 entry is a bomb, not a dataset
    ratio_floor: int = 64 * 1024**2  # flat-colour BMPs and long captions may compress well: tolerate some


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
            planned, left = _plan(entries, archive, limits)
            _write_all(planned, open_entry, tmp, archive, limits)
        if left:
            (tmp / LEFT_IN_ARCHIVE).write_text(json.dumps([p.as_posix() for p in left], ensure_ascii=False))
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


def _plan(entries: list[tuple[str, bool, int, int]], archive: Path, limits: ExtractLimits) -> tuple[list[_Entry], list[PurePosixPath]]:
    """(entries to extract, entries left in the archive), checked from the directory before writing anything.

    Only images and the captions beside them are extracted: a video or a stray archive in the zip
    would cost disk and time for nothing. What is left out is returned, so the report can name it.
    """
    size_on_disk = archive.stat().st_size  # no entry really packs into more than the whole file
    files = []
    for name, is_file, size, compressed in entries:
        relpath = _safe_relpath(name, archive)
        if is_file and relpath.parts and not is_junk(relpath):
            files.append(_Entry(name, relpath, size, min(compressed, size_on_disk)))
    if len(files) > limits.max_files:
        raise DatasetError(f"{archive.name} has {len(files)} files, over the limit of {limits.max_files}; split the dataset")
    files = _flatten(files)
    stems = {(e.relpath.parent, e.relpath.stem) for e in files if is_image(e.relpath)}
    used = [is_image(e.relpath) or (is_caption(e.relpath) and (e.relpath.parent, e.relpath.stem) in stems) for e in files]
    planned = [e for e, keep in zip(files, used) if keep]
    left = [e.relpath for e, keep in zip(files, used) if not keep]
    if len({str(e.relpath).lower() for e in planned}) != len(planned):
        raise DatasetError(f"{archive.name} holds the same file name twice (perhaps differing in case); rename one of them")
    total = sum(e.size for e in planned)
    if total > limits.max_total_bytes:
        raise DatasetError(f"{archive.name} unpacks to {total} bytes, over the limit of {limits.max_total_bytes}; split the dataset")
    bounds = _Bounds(archive, limits)
    for entry in planned:  # the headers' word first: an honest bomb is refused before a byte is written
        bounds.add(entry, entry.size)
    return planned, left


def _flatten(planned: list[_Entry]) -> list[_Entry]:
    """Drop a single top-level folder that holds everything, unless it is a kohya `N_name` folder."""
    tops = {e.relpath.parts[0] for e in planned}
    if len(tops) != 1 or any(len(e.relpath.parts) == 1 for e in planned) or _KOHYA_FOLDER.match(next(iter(tops))):
        return planned
    return [_Entry(e.name, PurePosixPath(*e.relpath.parts[1:]), e.size, e.compressed) for e in planned]


class _Bounds:
    """The running totals an extraction may not pass: bytes, bytes beyond max_ratio:1 per entry, and the
    archive's own ratio (a .tar.gz packs every entry into one stream, so its entries have no packed size).
    """

    def __init__(self, archive: Path, limits: ExtractLimits):
        self.archive, self.limits = archive, limits
        self.archive_bound = max(limits.ratio_floor, archive.stat().st_size * limits.max_ratio)
        self.total = 0
        self.excess = 0  # bytes past each entry's max_ratio allowance, summed

    def add(self, entry: _Entry, count: int, entry_so_far: int | None = None) -> None:
        """Count `count` more bytes of `entry`, of which `entry_so_far` (default: all) are its own so far.

        Raises:
            DatasetError: a bound is passed; the message names the entry for a per-entry ratio.
        """
        entry_so_far = count if entry_so_far is None else entry_so_far
        allowance = entry.compressed * self.limits.max_ratio
        self.excess += max(0, entry_so_far - max(allowance, entry_so_far - count))
        self.total += count
        name, limits = self.archive.name, self.limits
        if self.total > limits.max_total_bytes:  # past the header check, so the headers understate the sizes
            raise DatasetError(f"{name} unpacks to more than {limits.max_total_bytes} bytes (its header understates it); refusing it")
        if self.excess > limits.ratio_floor:
            raise DatasetError(
                f"{name} looks like a zip bomb: {entry.name!r} unpacks to {entry_so_far}+ bytes from {entry.compressed} "
                f"(over {limits.max_ratio:.0f}:1, which no image compresses to); re-create the archive"
            )
        if self.total > self.archive_bound:
            raise DatasetError(f"{name} looks like a zip bomb: it unpacks to over {limits.max_ratio:.0f} times its size; re-create the archive")


def _write_all(planned: list[_Entry], open_entry: Callable[[str], IO[bytes]], target: Path, archive: Path, limits: ExtractLimits) -> None:
    """Stream each entry to disk, counting the bytes really written: a header that lies about sizes must not win."""
    bounds = _Bounds(archive, limits)
    for entry in planned:
        out = target.joinpath(*entry.relpath.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open_entry(entry.name) as src, open(out, "xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                bounds.add(entry, len(chunk), written)
                dst.write(chunk)


def left_in_archive(root: Path) -> list[PurePosixPath]:
    """The files safe_extract left in the archive (not images or their captions), for the report; [] for any other folder."""
    try:
        names = json.loads((root / LEFT_IN_ARCHIVE).read_text())
    except (OSError, ValueError):
        return []
    return [PurePosixPath(n) for n in names if isinstance(n, str)]
