"""Location strings resolve to the right filesystem, and Drive paths never fall back to local disk."""

from __future__ import annotations

import os

import pytest

from anima_lora_flow.storage import resolve_location
from anima_lora_flow.errors import UserInputError, render


def test_local_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = resolve_location("runs")
    assert loc.is_local and loc.root == str(tmp_path / "runs")


def test_memory_url(memory_fs):
    loc = resolve_location("memory://bucket/runs")
    assert not loc.is_local and loc.root.endswith("bucket/runs")
    assert loc.join("p", "x") == loc.root + "/p/x"


def test_drive_path_outside_colab_is_a_clear_error():
    with pytest.raises(UserInputError, match="not Colab") as info:
        resolve_location("/content/drive/MyDrive/lora_training/output")
    assert info.value.field == "storage" and render(info.value, "notebook").endswith("gs:// / s3:// URL as storage")


def test_unknown_protocol_names_the_fix():
    with pytest.raises(ValueError, match="cannot open storage"):
        resolve_location("nosuchproto://x")


def test_empty_location():
    with pytest.raises(ValueError, match="empty"):
        resolve_location("  ")


def test_run_store_refuses_places_that_cannot_keep_it(tmp_path, memory_fs):
    from anima_lora_flow.errors import UserInputError
    from anima_lora_flow.storage import resolve_storage

    with pytest.raises(UserInputError, match="memory:// lives only inside this process"):
        resolve_storage("memory://store")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for inside in (a_file, a_file / "runs"):
        with pytest.raises(UserInputError, match=f"{a_file} is a file, not a folder; pass a folder"):
            resolve_storage(str(inside))
    assert a_file.read_text() == "x"  # never touched
    loc = resolve_storage(str(tmp_path / "new" / "runs"))
    assert (tmp_path / "new" / "runs").is_dir() and loc.is_local


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-555 folder; a read-only mount needs privileges")
def test_a_folder_that_cannot_be_written_is_refused_up_front(tmp_path):
    from anima_lora_flow.errors import UserInputError
    from anima_lora_flow.storage import resolve_storage

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserInputError, match="is not writable .*; pass a writable folder"):
            resolve_storage(str(locked))
    finally:
        locked.chmod(0o755)
