"""A guarded process group ends within seconds of the death of the process that started it (SIGKILL too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from anima_lora_flow.core.processes import group_alive, pid_alive, start_process_group, stop_process_group

# The guarded group: a leader that ignores SIGTERM, with a child in its group that ignores it too (as a
# data-parallel launcher and its workers): only the SIGKILL after the grace ends them.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.argv[1] == "leader":
        subprocess.Popen([sys.executable, __file__, "worker"])
    time.sleep(300)
    """
)

PARENT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from anima_lora_flow.core.processes import start_process_group
    out = Path(sys.argv[1])
    proc = start_process_group([sys.executable, sys.argv[2], "leader"], log_path=out.parent / "child.log")
    out.write_text(json.dumps({"pgid": proc.pid}))
    time.sleep(300)
    """
)


# sd-scripts runs in a session of its own under the trainer's wrapper (trainer/sdscripts/launch.py).
SDSCRIPTS_PARENT = textwrap.dedent(
    """
    import json, subprocess, sys, threading, time
    from pathlib import Path
    from anima_lora_flow.trainer.sdscripts import launch
    out = Path(sys.argv[1])
    real_popen = subprocess.Popen
    def recording_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        if not out.exists():
            out.write_text(json.dumps({"pgid": proc.pid}))
        return proc
    launch.subprocess.Popen = recording_popen
    launch.run_sd_scripts([sys.executable, sys.argv[2], "leader"], echo=lambda *a, **k: None)
    """
)


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _group_size(pgid: int) -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit() and _pgid(entry) == pgid)


def _pgid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.parametrize("parent_code", [PARENT, SDSCRIPTS_PARENT], ids=["trainer", "sd-scripts"])
def test_group_of_a_sigkilled_parent_is_stopped(tmp_path, parent_code):
    (tmp_path / "stubborn.py").write_text(STUBBORN)
    (tmp_path / "parent.py").write_text(parent_code)
    record = tmp_path / "child.json"
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(record), str(tmp_path / "stubborn.py")])
    pgid = None
    try:
        assert _wait_for(record.exists, 60), "the parent never started its child"
        pgid = json.loads(record.read_text())["pgid"]
        assert _wait_for(lambda: _group_size(pgid) == 2, 30), "the leader never started its worker"
        parent.kill()  # SIGKILL: no clean-up code of the parent runs
        parent.wait()
        killed = time.monotonic()
        assert _wait_for(lambda: not group_alive(pgid), 20), "the orphaned group is still running"
        assert time.monotonic() - killed < 15
    finally:
        if parent.poll() is None:
            parent.kill()
        if pgid is not None and group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_watchdog_leaves_with_a_group_that_ends_normally(tmp_path):
    proc = start_process_group([sys.executable, "-c", "import time; time.sleep(4)"], log_path=tmp_path / "log")
    # The watchdog's command line shows once its exec is done: on a loaded machine, after start returns.
    assert _wait_for(lambda: len(_watchdogs_of(proc.pid)) == 1, 3)
    watchdogs = _watchdogs_of(proc.pid)
    proc.wait()
    assert _wait_for(lambda: not any(pid_alive(w) and not _zombie(w) for w in watchdogs), 10)


def test_stopping_a_guarded_group_still_works(tmp_path):
    proc = start_process_group([sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "log")
    assert stop_process_group(proc, grace_s=5) == -signal.SIGTERM
    assert not group_alive(proc.pid)


def _watchdogs_of(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"anima_lora_flow.core.watchdog" in args and str(pgid).encode() in args:
            found.append(int(entry))
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
