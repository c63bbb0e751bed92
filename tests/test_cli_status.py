"""`anima-lora status` names the run training now, the steps of interrupted runs, and runs killed without a record."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anima_lora_flow.cli import main
from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.train import new_run_id
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.lock import LOCK_FILE
from anima_lora_flow.tasks.storage import record_run_task

HOLD_LOCK = """
import sys, time
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.lock import acquire_project_lock
acquire_project_lock(RunStore(resolve_location(sys.argv[1]), "p"), "20250101-120000-0042", clock=lambda: time.time() - 12)
print("locked", flush=True)
time.sleep(60)
"""


def _status(capsys, *argv) -> str:
    code = main(["status", "p", *argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _state(store: RunStore, tmp_path: Path, step: int, total: int = 24) -> None:
    folder = tmp_path / f"state-{step}"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"w" * step)
    store.publish_state(folder, step, epoch=step // 12, fingerprint="f", extra={"total_steps": total})


@pytest.fixture
def store(tmp_path) -> RunStore:
    store = RunStore(resolve_location(str(tmp_path / "runs")), "p")
    store.fs.makedirs(store.root, exist_ok=True)  # what mount-storage leaves before the first state
    return store


def test_a_first_run_holding_the_lock_is_training_now_not_nothing_yet(store, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "runs")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = _status(capsys, "--storage", str(tmp_path / "runs"))
    finally:
        holder.kill()
        holder.wait()
    line = re.search(r"training now: run 20250101-120000-0042 on host (\S+), pid (\d+), heartbeat (\d+) s ago", out)
    assert line, out
    assert line.group(1) == socket.gethostname() and int(line.group(2)) == holder.pid and 11 <= int(line.group(3)) <= 20
    assert "nothing here yet" not in out
    assert "training now  steps -/-  20250101-120000-0042" in out


def test_a_killed_run_holding_a_stale_lock_is_listed_as_ended_without_a_record(store, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.write_json(LOCK_FILE, {"run_id": "20250101-120000-0042", "host": socket.gethostname(), "pid": dead.pid,
                                 "started": time.time() - 600, "heartbeat": time.time() - 40})
    out = _status(capsys, "--storage", str(tmp_path / "runs"))
    assert (f"stale lock: run 20250101-120000-0042 on host {socket.gethostname()}, pid {dead.pid}, last heartbeat 40 s ago "
            f"(its process {dead.pid} on this machine is gone)") in out
    assert "ended without a record (killed?)  steps -/-  20250101-120000-0042" in out


def test_a_killed_run_without_a_lock_is_found_by_its_config_and_states(store, tmp_path, capsys):
    run_id = new_run_id()
    config = TrainingConfig(dataset="d", project_name="p", storage=str(tmp_path / "runs"))
    store.write_json(f"configs/{run_id}/config.json", config.model_dump(mode="json"))  # as the session does first
    _state(store, tmp_path, 12)
    store.write_json(f"configs/{new_run_id()}-dry/training.toml", {})  # a dry run's files are no run
    out = _status(capsys, "--storage", str(tmp_path / "runs"))
    assert f"ended without a record (killed?)  steps 12/24 (newest state)  {run_id}" in out
    assert "runs (1):" in out


def test_an_interrupted_run_shows_the_steps_of_its_newest_state(store, tmp_path, capsys):
    config = TrainingConfig(dataset="d", project_name="p", storage=str(tmp_path / "runs"))
    started = time.time() - 1
    _state(store, tmp_path, 12)
    _state(store, tmp_path, 18)
    record = {"run_id": "r-int", "started": started, "ended": time.time() + 1, "outcome": "failed", "steps_done": 0,
              "total_steps": None, "trainer": "native"}
    record_run_task.fn(config, record, error=KeyboardInterrupt())  # what the flow records on Ctrl-C
    assert store.runs()[-1]["steps_done"] is None
    out = _status(capsys, "--storage", str(tmp_path / "runs"))
    assert "interrupted  steps 18/24 (newest state)  r-int" in out, out


def test_storage_defaults_to_trains_anima_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = RunStore(resolve_location("./anima-runs"), "p")
    _state(store, tmp_path, 12)
    assert TrainingConfig(dataset="d").storage == "./anima-runs"
    out = _status(capsys)
    assert "step      12 of 24" in out and os.path.join("anima-runs", "p") in out
