"""Whether a storage root outlives this session (the condition for training across sessions)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from .detect import PlatformInfo

# Local folders that survive a Colab/Kaggle session: Drive, and Kaggle's saved output folder.
_DURABLE_PREFIXES = ("/content/drive", "/kaggle/working")


def is_durable_storage(storage: str, platform: PlatformInfo, cwd: str | None = None) -> bool:
    """True for gs://, s3://, hf:// and kin; for local paths, True unless on a Colab/Kaggle VM's scratch disk."""
    text = storage.strip()
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "memory":  # lives in this process only
            return False
        if scheme != "file":
            return True
        text = text.split("://", 1)[1]
    if not platform.ephemeral_disk:
        return True
    path = PurePosixPath(os.path.normpath(os.path.join(cwd or os.getcwd(), os.path.expanduser(text))))
    return any(path == PurePosixPath(p) or PurePosixPath(p) in path.parents for p in _DURABLE_PREFIXES)
