"""Google Drive on Colab: mount it when a /content/drive path is used, and never fake it elsewhere."""

from __future__ import annotations

import errno
import importlib
from pathlib import Path

from ..errors import UserInputError, setting

DRIVE_MOUNT_POINT = "/content/drive"
# errno values a dropped Drive FUSE mount raises ("Transport endpoint is not connected" and kin).
DROPPED_MOUNT_ERRNOS = frozenset({errno.ENOTCONN, errno.EIO, errno.ESTALE, errno.ENODEV, errno.EHOSTDOWN})


def is_drive_path(path: str) -> bool:
    return path == DRIVE_MOUNT_POINT or path.startswith(DRIVE_MOUNT_POINT + "/")


def _colab_drive():
    try:
        return importlib.import_module("google.colab.drive")
    except ImportError:
        return None


def is_mounted(mount_point: str = DRIVE_MOUNT_POINT) -> bool:
    root = Path(mount_point) / "MyDrive"
    try:
        return root.is_dir()
    except OSError:
        return False


def ensure_drive_mounted(path: str, *, force_remount: bool = False, mount_point: str = DRIVE_MOUNT_POINT) -> None:
    """Mount Google Drive for `path` when on Colab; raise a plain error instead of writing locally.

    The seed created /content/drive/... as local folders when Drive was not mounted, and the run's
    outputs vanished with the VM. Here a Drive path either reaches Drive or stops the run.
    """
    if is_mounted(mount_point) and not force_remount:
        return
    drive = _colab_drive()
    if drive is None:
        raise UserInputError(
            f"{path} is a Google Drive path, but this is not Colab and no Drive is mounted at {mount_point}; "
            f"use a local folder or a gs:// / s3:// URL as {setting('storage')}",
            field="storage",
        )
    try:
        drive.mount(mount_point, force_remount=force_remount)
    except Exception as exc:  # google.colab raises plain Exceptions with the user-facing reason
        raise UserInputError(
            f"Google Drive could not be mounted at {mount_point} ({exc}); mount it in a notebook cell first: "
            "from google.colab import drive; drive.mount('/content/drive')"
        ) from exc
    if not is_mounted(mount_point):
        raise UserInputError(
            f"Google Drive mount at {mount_point} did not appear; re-run the cell and accept the Drive permission prompt"
        )


def is_dropped_mount_error(exc: BaseException) -> bool:
    """True when an OSError looks like a Drive FUSE mount that went away."""
    return isinstance(exc, OSError) and exc.errno in DROPPED_MOUNT_ERRNOS


def remount_on_drop(root: str, mount_point: str = DRIVE_MOUNT_POINT):
    """A storage-error hook for the checkpoint sync: remount Drive (force) when its FUSE mount dropped.

    Colab's Drive mount drops after hours ("Transport endpoint is not connected"); the sync keeps the
    checkpoint on local disk, calls this, and retries the upload once Drive is back.
    """
    if not is_drive_path(root):
        return None

    def recover(exc: BaseException) -> None:
        if is_dropped_mount_error(exc):
            ensure_drive_mounted(root, force_remount=True, mount_point=mount_point)

    return recover
