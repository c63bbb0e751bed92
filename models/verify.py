"""Size and SHA-256 checks (remembered by size and mtime so a second run does not re-hash 5 GB) and the disk check."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core.hashing import sha256_file
from ..errors import setting
from .errors import ModelInputError

DISK_MARGIN = 0.10  # headroom for temporary files and the filesystem's own rounding


class HashRecord:
    """A JSON file mapping a real path to (size, mtime_ns, sha256), so an unchanged file is hashed once."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._data: dict[str, dict] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._data = {}

    def sha256(self, file: Path) -> str:
        """The file's SHA-256, from the record when size and mtime still match, else computed and recorded."""
        real = os.path.realpath(file)
        stat = os.stat(real)
        entry = self._data.get(real)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return entry["sha256"]
        digest = sha256_file(real)
        self._data[real] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self._save()
        return digest

    def known(self, file: Path) -> str | None:
        """The recorded SHA-256 if the file is unchanged since it was hashed, without reading it."""
        real = os.path.realpath(file)
        entry = self._data.get(real)
        try:
            stat = os.stat(real)
        except OSError:
            return None
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return entry["sha256"]
        return None

    def forget(self, file: Path) -> None:
        self._data.pop(os.path.realpath(file), None)
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def check_file(path: Path, size: int | None, sha256: str | None, record: HashRecord) -> str | None:
    """None when the file matches; else a short reason (missing, wrong size, wrong hash)."""
    if not path.is_file():
        return "missing"
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if sha256 is not None:
        actual = record.sha256(path)
        if actual != sha256:
            return f"SHA-256 {actual[:12]}…, expected {sha256[:12]}…"
    return None


def ensure_disk_space(folder: Path, needed_bytes: int) -> None:
    """Fail before downloading when `folder`'s disk lacks `needed_bytes` plus a 10% margin.

    Raises:
        ModelInputError: not enough free space (names GB needed and free).
    """
    if needed_bytes <= 0:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    needed = int(needed_bytes * (1 + DISK_MARGIN))
    if free < needed:
        raise ModelInputError(
            f"not enough disk space for the models: {needed / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free at "
            f"{probe}; free some space or pass {setting('cache_dir')} on a larger disk"
        )
