"""Google Drive: a dropped mount is remounted with force; other errors are left to the retry loop."""

from __future__ import annotations

import errno
import sys
import types

from anima_lora_flow.storage.drive import remount_on_drop


def _fake_colab(monkeypatch, mount_root):
    calls = []

    def mount(mount_point, force_remount=False):
        calls.append((mount_point, force_remount))
        (mount_root / "MyDrive").mkdir(parents=True, exist_ok=True)

    colab = types.ModuleType("google.colab")
    drive = types.ModuleType("google.colab.drive")
    drive.mount = mount
    colab.drive = drive
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    return calls


def test_dropped_mount_is_remounted_with_force(tmp_path, monkeypatch):
    calls = _fake_colab(monkeypatch, tmp_path)
    recover = remount_on_drop("/content/drive/MyDrive/runs", mount_point=str(tmp_path))
    recover(OSError(errno.ENOTCONN, "Transport endpoint is not connected"))
    assert calls == [(str(tmp_path), True)]
    recover(OSError(errno.EACCES, "Permission denied"))
    assert len(calls) == 1


def test_non_drive_storage_has_no_hook():
    assert remount_on_drop("/tmp/runs") is None
