"""Resolve a location string (local path, /content/drive/..., gs://, s3://, hf://, memory://) to fsspec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import UserInputError
from .drive import ensure_drive_mounted, is_drive_path


@dataclass(frozen=True)
class Location:
    """A filesystem and a root path on it. `url` is what the user wrote, for messages."""

    fs: fsspec.AbstractFileSystem
    root: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def is_drive(self) -> bool:
        return self.is_local and is_drive_path(self.root)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])


def resolve_location(location: str, *, mount_drive: bool = True, **storage_options) -> Location:
    """Turn a user's location string into (filesystem, root path).

    Raises:
        UserInputError: the string is empty or names an fsspec protocol that is not installed.
        DriveUnavailableError: a Drive path outside Colab, or the mount failed.
    """
    text = (location or "").strip()
    if not text:
        raise UserInputError("storage location is empty; pass a folder or a URL such as gs://bucket/runs")
    if "://" not in text:
        path = str(Path(text).expanduser().absolute())
        if is_drive_path(path) and mount_drive:
            ensure_drive_mounted(path)
        return Location(LocalFileSystem(), path, text)
    try:
        fs, root = fsspec.url_to_fs(text, **storage_options)
    except (ImportError, ValueError) as exc:
        protocol = text.split("://", 1)[0]
        hint = {"gs": "gcs", "gcs": "gcs", "s3": "s3"}.get(protocol)
        extra = f"; install it with: pip install 'anima-lora-flow[{hint}]'" if hint else ""
        raise UserInputError(f"cannot open storage {text!r}: {exc}{extra}") from exc
    return Location(fs, root.rstrip("/") or root, text)


def resolve_storage(location: str) -> Location:
    """resolve_location for the run store, refusing places that cannot keep it.

    Raises:
        UserInputError: memory:// (gone when the process ends), or a local path that is a file or
            cannot be created; one line saying what to pass instead.
    """
    loc = resolve_location(location)
    protocols = loc.fs.protocol if isinstance(loc.fs.protocol, tuple) else (loc.fs.protocol,)
    if "memory" in protocols:
        raise UserInputError(
            f"--storage {location}: memory:// lives only inside this process, so the LoRA would be lost when it ends; "
            "pass a folder or a URL such as gs://bucket/runs"
        )
    if loc.is_local:
        ensure_local_folder(loc.root, "--storage")
    return loc


def ensure_local_folder(path: str | Path, flag: str) -> Path:
    """Create `path` (and parents) or raise UserInputError saying why it cannot be a folder."""
    path = Path(path).expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserInputError(f"{flag} {path}: {blocker} is a file, not a folder; pass a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{flag} {path}: cannot create this folder ({exc.strerror or exc}); pass a writable folder") from exc
    return path
