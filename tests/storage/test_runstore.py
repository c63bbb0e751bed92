"""The run store: round trips, atomic publish, manifests, pruning, on a local folder and memory://."""

from __future__ import annotations

import json

import pytest

from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.runstore import PART_MARK, StateVerificationError


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path, memory_fs):
    url = str(tmp_path / "runs") if request.param == "local" else "memory://runs"
    return RunStore(resolve_location(url), "proj")


def _state_dir(tmp_path, step, payload=b"weights"):
    folder = tmp_path / f"local-state-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter.safetensors").write_bytes(payload * 100)
    (folder / "sub" / "progress.json").write_text(json.dumps({"step": step}))
    return folder


def test_publish_file_round_trip(store, tmp_path):
    src = tmp_path / "lora.safetensors"
    src.write_bytes(b"x" * 12345)
    published = store.publish_file(src, "checkpoints/proj.safetensors")
    assert published.size == 12345
    assert store.list_checkpoints() == ["proj.safetensors"]
    with store.fs.open(published.path, "rb") as fh:
        assert fh.read() == src.read_bytes()


def test_interrupted_publish_leaves_nothing_visible(store, tmp_path):
    def upload_then_drop(target):  # part of the bytes arrive, then the connection drops, as a dropped network would
        with store.fs.open(target, "wb") as out:
            out.write(b"y" * 1000)
        raise ConnectionError("network dropped mid-copy")

    dest = store.path("checkpoints/proj.safetensors")
    with pytest.raises(ConnectionError):
        store._publish(dest, 5000, upload_then_drop)
    if store.location.is_local:  # a temporary name, removed: nothing at all under checkpoints/
        assert store.list_checkpoints() == []
        assert not [p for p in store.fs.ls(store.path("checkpoints"), detail=False) if PART_MARK in p]


def test_short_upload_is_refused(store, tmp_path):
    with pytest.raises(OSError, match="incomplete"):
        store._publish(store.path("checkpoints/proj.safetensors"), 10, lambda target: store.fs.pipe_file(target, b"abc"))
    if store.location.is_local:
        assert store.list_checkpoints() == []


def test_a_state_whose_upload_failed_is_not_published(tmp_path, memory_fs, monkeypatch):
    """Object stores get no temporary names: the manifest, written last, is what makes a state count."""
    store = RunStore(resolve_location("memory://runs"), "proj")
    real_put = store.fs.put_file

    def put_file(lpath, rpath, **kwargs):
        real_put(lpath, rpath, **kwargs)
        if rpath.endswith("progress.json"):  # the second file of the state fails after its bytes landed
            raise ConnectionError("network dropped")

    monkeypatch.setattr(store.fs, "put_file", put_file)
    with pytest.raises(ConnectionError):
        store.publish_state(_state_dir(tmp_path, 100), 100, epoch=1, fingerprint="fp")
    assert list(store.iter_valid_states()) == [] and store.latest_pointer() is None


def test_object_store_writes_are_one_put_each(tmp_path, memory_fs, monkeypatch):
    """No temporary name on an object store: each file is put once at its final name, never copied or deleted."""
    store = RunStore(resolve_location("memory://runs"), "proj")
    calls = []
    for name in ("put_file", "pipe_file", "mv", "copy", "cp_file", "rm", "rm_file"):
        real = getattr(store.fs, name)
        monkeypatch.setattr(store.fs, name, lambda *a, _real=real, _name=name, **k: (calls.append((_name, a[0])), _real(*a, **k))[1])
    store.publish_state(_state_dir(tmp_path, 100), 100, epoch=1, fingerprint="fp")
    files = ["adapter.safetensors", "sub/progress.json"]
    state = store.path("state", "000000100")
    assert calls == [("put_file", str(tmp_path / "local-state-100" / f)) for f in files] + [
        ("pipe_file", f"{state}/manifest.json"), ("pipe_file", store.path("state", "LATEST"))]
    assert next(store.iter_valid_states(check_hashes=True))[1] is None


def test_state_publish_verify_and_latest(store, tmp_path):
    store.publish_state(_state_dir(tmp_path, 100), 100, epoch=1, fingerprint="fp")
    store.publish_state(_state_dir(tmp_path, 200), 200, epoch=2, fingerprint="fp")
    assert [s.step for s in store.list_states()] == [100, 200]
    assert store.latest_pointer() == 200
    newest, reason = next(store.iter_valid_states(check_hashes=True))
    assert (newest.step, reason) == (200, None)
    local = store.download_state(newest, tmp_path / "restored")
    assert json.loads((local / "sub" / "progress.json").read_text()) == {"step": 200}


def test_state_without_manifest_is_ignored_and_truncated_state_skipped(store, tmp_path):
    store.publish_state(_state_dir(tmp_path, 100), 100, epoch=1, fingerprint="fp")
    store.publish_state(_state_dir(tmp_path, 200), 200, epoch=2, fingerprint="fp")
    # A crash after uploading files but before the manifest: the folder must not count.
    store.write_bytes("state/000000300/adapter.safetensors", b"partial")
    # A truncated file under a published manifest: verification must skip it.
    with store.fs.open(store.path("state/000000200/adapter.safetensors"), "wb") as fh:
        fh.write(b"trunc")
    verdicts = [(s.step, reason is None) for s, reason in store.iter_valid_states()]
    assert verdicts == [(200, False), (100, True)]
    with pytest.raises(StateVerificationError):
        store.verify_state(store.list_states()[-1])


def test_prune_keeps_exactly_n(store, tmp_path):
    for step in (10, 20, 30, 40):
        store.publish_state(_state_dir(tmp_path, step), step, epoch=0, fingerprint="fp", keep_last=2)
    assert [s.step for s in store.list_states()] == [30, 40]
    for epoch in range(1, 7):
        src = tmp_path / f"e{epoch}.safetensors"
        src.write_bytes(b"e")
        store.publish_file(src, f"checkpoints/{store.checkpoint_name(epoch)}")
    store.publish_file(src, f"checkpoints/{store.checkpoint_name()}")
    removed = store.prune_checkpoints(4)
    assert removed == ["proj-000001.safetensors", "proj-000002.safetensors"]
    assert store.list_checkpoints() == [
        "proj-000003.safetensors",
        "proj-000004.safetensors",
        "proj-000005.safetensors",
        "proj-000006.safetensors",
        "proj.safetensors",
    ]


def test_runs_jsonl_appends(store):
    store.append_run({"run": 1, "outcome": "stopped"})
    store.append_run({"run": 2, "outcome": "completed"})
    assert [r["run"] for r in store.runs()] == [1, 2]


def test_lora_metadata_is_read_from_the_header(store, tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"ss_steps": "24", "ss_config_fingerprint": "f"})
    store.publish_file(path, "checkpoints/proj.safetensors")
    assert store.lora_metadata("checkpoints/proj.safetensors") == {"ss_steps": "24", "ss_config_fingerprint": "f"}
    store.write_bytes("checkpoints/broken.safetensors", b"not a safetensors file")
    assert store.lora_metadata("checkpoints/broken.safetensors") is None
    assert store.lora_metadata("checkpoints/missing.safetensors") is None


def test_archive_moves_one_file_into_a_stamped_folder_and_nothing_when_absent(store):
    store.write_bytes("checkpoints/proj.safetensors", b"final")
    store.write_bytes("checkpoints/proj-000001.safetensors", b"epoch")
    moved = store.archive(["checkpoints/proj.safetensors", "checkpoints/nothing.safetensors"], stamp="T")
    assert moved == {"checkpoints/proj.safetensors": store.path("archive", "checkpoints-T", "proj.safetensors")}
    assert store.list_checkpoints() == ["proj-000001.safetensors"]
    assert store.listdir("archive/checkpoints-T") == ["proj.safetensors"]
    with store.fs.open(moved["checkpoints/proj.safetensors"], "rb") as fh:
        assert fh.read() == b"final"
    assert store.archive(["state"]) == {}
