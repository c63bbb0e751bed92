"""The trainer's process group: a cancel reaches children that ignore SIGTERM."""

from __future__ import annotations

import os
import sys
import textwrap
import time

from anima_lora_flow.core.processes import group_alive, start_process_group, stop_process_group

STUBBORN = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds no memory or GPU.
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_stop_kills_the_whole_group(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    pid_file = tmp_path / "child.pid"
    proc = start_process_group([sys.executable, str(script), str(pid_file)], log_path=tmp_path / "log.txt")
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    stop_process_group(proc, grace_s=0.5)
    time.sleep(0.2)
    assert proc.poll() is not None
    assert not _alive(child)
    assert not group_alive(proc.pid)
