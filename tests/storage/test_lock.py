"""One run per project: a second run is refused while the first one lives, and a dead run's lock expires."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.lock import LOCK_FILE, STALE_S, acquire_project_lock, read_lock


@pytest.fixture
def store(tmp_path):
    return RunStore(resolve_location(str(tmp_path / "runs")), "p")


def _plant(store, **record):
    store.write_bytes(LOCK_FILE, json.dumps({"run_id": "other", "started": 0, **record}).encode())


def test_a_live_run_on_another_machine_keeps_the_project(store):
    _plant(store, host="colab-vm-1", pid=123, heartbeat=1000.0)
    with pytest.raises(UserInputError) as caught:
        acquire_project_lock(store, "mine", clock=lambda: 1000.0 + 60)
    message = str(caught.value)
    assert "project 'p' is being trained by run other on colab-vm-1 (pid 123)" in message
    assert "last heard from 60 s ago" in message and "use another --project-name" in message
    assert read_lock(store)["run_id"] == "other"  # untouched


def test_a_silent_lock_is_taken_over_and_released_by_its_new_owner(store):
    _plant(store, host="colab-vm-1", pid=123, heartbeat=1000.0)
    lock = acquire_project_lock(store, "mine", clock=lambda: 1000.0 + STALE_S + 1)
    assert read_lock(store)["run_id"] == "mine"
    lock.clock = lambda: 5000.0
    lock.beat()
    assert read_lock(store)["heartbeat"] == 5000.0
    lock.release()
    assert read_lock(store) is None


def test_a_dead_process_on_this_machine_frees_the_project_at_once(store):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant(store, host=socket.gethostname(), pid=dead.pid, heartbeat=1e12)  # fresh heartbeat, dead process
    acquire_project_lock(store, "mine").release()
    _plant(store, host=socket.gethostname(), pid=os.getppid(), heartbeat=1e12)  # a live process here
    with pytest.raises(UserInputError, match="is being trained by run other"):
        acquire_project_lock(store, "mine", clock=lambda: 1e12)


def test_release_leaves_another_runs_lock_alone(store):
    lock = acquire_project_lock(store, "mine")
    _plant(store, host="elsewhere", pid=1, heartbeat=1e12)  # taken over meanwhile (ours had gone stale)
    lock.release()
    assert read_lock(store)["run_id"] == "other"
