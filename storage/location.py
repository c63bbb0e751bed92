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
