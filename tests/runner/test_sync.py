"""Checkpoint sync: uploads in the background, retries a failing store, never blocks the caller."""

from __future__ import annotations

import errno
import time

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

from anima_lora_flow.runner.sync import CheckpointSyncer
from anima_lora_flow.storage import RunStore, resolve_location


class FlakyFileSystem(MemoryFileSystem):
    """A memory store whose writes fail while `down` is set, like a dropped network or Drive mount."""

    protocol = "flaky"
    down = False
    failed_writes = 0

    def _open(self, path, mode="rb", **kwargs):
        if "w" in mode and FlakyFileSystem.down:
            FlakyFileSystem.failed_writes += 1
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


def _state(tmp_path, step):
    folder = tmp_path / f"state-{step}"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"w" * (step + 1))
    return folder


def test_uploads_states_and_loras(tmp_path, memory_fs):
    store = RunStore(resolve_location("memory://runs"), "p")
    syncer = CheckpointSyncer(store, fingerprint="fp", keep_last_states=2, keep_last_epochs=1, retry_delays=(0.01,))
    lora = tmp_path / "p-000001.safetensors"
    lora.write_bytes(b"lora")
    syncer.submit_lora(lora, epoch=1)
    lora2 = tmp_path / "p-000002.safetensors"
    lora2.write_bytes(b"lora2")
    syncer.submit_lora(lora2, epoch=2)
    syncer.submit_state(_state(tmp_path, 10), step=10, epoch=1)
    assert syncer.close(timeout=10)
    assert store.list_checkpoints() == ["p-000002.safetensors"]
    assert [s.step for s in store.list_states()] == [10]
    assert syncer.steps_at_risk(15) == 5


def test_kohya_copies_travel_and_are_pruned_with_their_lora(tmp_path, memory_fs):
    store = RunStore(resolve_location("memory://runs"), "p")
    syncer = CheckpointSyncer(store, fingerprint="fp", keep_last_epochs=1, retry_delays=(0.01,))
    for epoch in (1, 2):
        (tmp_path / f"p-{epoch:06d}.safetensors").write_bytes(b"comfy")
        (tmp_path / f"p-{epoch:06d}.kohya.safetensors").write_bytes(b"kohya")
        syncer.submit_lora(tmp_path / f"p-{epoch:06d}.safetensors", epoch=epoch)
    (tmp_path / "p.safetensors").write_bytes(b"final")
    (tmp_path / "p.kohya.safetensors").write_bytes(b"final kohya")
    syncer.submit_lora(tmp_path / "p.safetensors", epoch=None)
    assert syncer.close(timeout=10)
    assert sorted(store.list_checkpoints()) == [
        "p-000002.kohya.safetensors", "p-000002.safetensors", "p.kohya.safetensors", "p.safetensors",
    ]  # fmt: skip
    with store.fs.open(store.path("checkpoints", "p.kohya.safetensors"), "rb") as fh:
        assert fh.read() == b"final kohya"


def test_failing_store_is_retried_without_blocking(tmp_path):
    FlakyFileSystem.store.clear()
    FlakyFileSystem.down = True
    FlakyFileSystem.failed_writes = 0
    messages = []
    store = RunStore(resolve_location("flaky://runs"), "p")
    syncer = CheckpointSyncer(store, fingerprint="fp", retry_delays=(0.05,), log=messages.append)
    started = time.monotonic()
    syncer.submit_state(_state(tmp_path, 5), step=5, epoch=0)
    assert time.monotonic() - started < 0.5  # submitting never waits for storage
    assert not syncer.flush(timeout=0.5)
    assert syncer.steps_at_risk(5) == 5
    assert FlakyFileSystem.failed_writes >= 2
    assert any("Training continues" in m for m in messages)
    FlakyFileSystem.down = False  # the network comes back
    assert syncer.close(timeout=10)
    assert [s.step for s in store.list_states()] == [5]
    assert syncer.steps_at_risk(5) == 0


def test_checkpoint_pruned_locally_before_upload_is_skipped(tmp_path, memory_fs):
    store = RunStore(resolve_location("memory://runs"), "p")
    messages = []
    syncer = CheckpointSyncer(store, fingerprint="fp", retry_delays=(0.01,), log=messages.append)
    syncer.submit_state(tmp_path / "gone-state", step=3, epoch=0)
    syncer.submit_state(_state(tmp_path, 6), step=6, epoch=0)
    assert syncer.close(timeout=10)
    assert [s.step for s in store.list_states()] == [6]


def test_missing_file_never_loops_forever(tmp_path, memory_fs):
    store = RunStore(resolve_location("memory://runs"), "p")
    messages = []
    syncer = CheckpointSyncer(store, fingerprint="fp", retry_delays=(0.01,), log=messages.append)
    syncer.submit_lora(tmp_path / "p-000001.safetensors", epoch=1)
    assert syncer.close(timeout=5)
    assert any("skipped" in m for m in messages) and store.list_checkpoints() == []


def test_enotconn_after_n_writes_recovers_after_remount(tmp_path):
    """Drive drops mid-run: writes fail with ENOTCONN until the storage-error hook remounts it."""
    FlakyFileSystem.store.clear()
    FlakyFileSystem.down = False
    remounts = []

    def remount(exc):
        if getattr(exc, "errno", None) == errno.ENOTCONN:
            remounts.append(exc)
            FlakyFileSystem.down = False

    store = RunStore(resolve_location("flaky://drive"), "p")
    syncer = CheckpointSyncer(store, fingerprint="fp", retry_delays=(0.01,), log=lambda m: None, on_storage_error=remount)
    syncer.submit_state(_state(tmp_path, 1), step=1, epoch=0)
    assert syncer.flush(timeout=5)
    FlakyFileSystem.down = True  # the mount drops after the first state
    syncer.submit_state(_state(tmp_path, 2), step=2, epoch=0)
    assert syncer.close(timeout=10)
    assert len(remounts) == 1
    assert [s.step for s in store.list_states()] == [1, 2]
