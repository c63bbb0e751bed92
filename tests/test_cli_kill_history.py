"""A CLI run killed with SIGKILL leaves nothing running, and the next run resumes where the saved state is;
every CLI run keeps its full history (flow run, task runs, logs, events) where `anima-lora ui` finds it.

Real processes throughout: the `anima-lora train` command, its Prefect server, its trainer subprocess
and their watchdogs; the only signal sent is the SIGKILL of the command's own process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from anima_lora_flow.demo import demo_config
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.trainer.events import read_events


def _processes_with_home(home: Path) -> list[int]:
    """Live (non-zombie) processes whose environment has PREFECT_HOME=home: everything a run started."""
    marker = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if marker not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def _describe(pids: list[int]) -> str:
    lines = []
    for pid in pids:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"{pid}: {args[:200]}")
        except OSError:
            pass
    return "\n".join(lines)


def _steps(work: Path) -> list[dict]:
    events = []
    for path in work.glob("runs/*/events.jsonl"):
        events += [{"event": e.event, **e.data} for e in read_events(path)]
    return events


@pytest.mark.slow  # about a minute: two CLI runs and a 15 s wait; tests/core/test_watchdog.py proves the mechanism in CI
def test_sigkilled_cli_leaves_no_process_and_the_rerun_resumes_with_full_history(tmp_path):
    base = demo_config(tmp_path / "demo")
    # A state every step: whatever moment the kill lands, a state in storage is what the rerun starts from.
    config = base.model_dump(mode="json") | {
        "storage": str(tmp_path / "runs"), "work_dir": str(tmp_path / "work"), "save_state_every_minutes": 1e-5,
        "max_train_epochs": 3,
    }
    config_file = tmp_path / "config.toml"
    config_file.write_text(tomli_w.dumps({k: v for k, v in config.items() if v is not None}))
    home = tmp_path / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name in ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "anima_lora_flow.cli", "train", "--config", str(config_file), "--verbose"]
    store = RunStore(resolve_location(config["storage"]), config["project_name"])

    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and first.poll() is None:
            stepped = any(e["event"] == "step" and e.get("step", 0) >= 3 for e in _steps(tmp_path / "work"))
            if stepped and store.list_states():
                break
            time.sleep(0.5)
        assert first.poll() is None, "the run ended before it was killed"
        running = _processes_with_home(home)
        assert len(running) >= 3, _describe(running)  # the command, its Prefect server and the trainer at least
        os.kill(first.pid, signal.SIGKILL)  # the command's own process only, as the OOM killer or `kill -9` would
        first.wait()
        killed = time.monotonic()
        while _processes_with_home(home) and time.monotonic() - killed < 15:
            time.sleep(0.5)
        left = _processes_with_home(home)
        assert not left, f"still running 15 s after the kill:\n{_describe(left)}"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        for pid in _processes_with_home(home):
            os.kill(pid, signal.SIGKILL)

    saved = store.list_states()[-1].step
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    plans = [e for e in _steps(tmp_path / "work") if e["event"] == "plan" and e.get("start_step")]
    assert [p["start_step"] for p in plans] == [saved]
    assert store.exists(f"checkpoints/{config['project_name']}.safetensors")

    # The history: where it is, how to open it, and no link to the per-command server that is gone.
    output = second.stdout + second.stderr
    assert f"run history: the Prefect database in {home}" in output and "`anima-lora ui`" in output
    assert "View at http" not in output
    with sqlite3.connect(home / "prefect.db") as db:
        flow_runs = dict(db.execute("SELECT id, state_type FROM flow_run").fetchall())
        completed = [run for run, state in flow_runs.items() if state == "COMPLETED"]
        assert len(completed) == 1
        task_runs = db.execute("SELECT count(*) FROM task_run WHERE flow_run_id = ?", completed).fetchone()[0]
        logs = db.execute("SELECT count(*) FROM log WHERE flow_run_id = ?", completed).fetchone()[0]
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
    assert task_runs >= 3 and logs > 0 and events > 0, (task_runs, logs, events)
    time.sleep(2)  # the watchdogs notice their group has ended within a poll
    assert not _processes_with_home(home), _describe(_processes_with_home(home))
