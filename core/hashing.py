"""SHA-256 of a file, local or on any fsspec filesystem."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, fs=None) -> str:
    """Hex SHA-256 of a file; with `fs` (an fsspec filesystem) the file is read from there."""
    with (fs.open(path, "rb") if fs is not None else open(path, "rb")) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
