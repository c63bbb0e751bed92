"""A trainer subprocess in its own process group, so a cancel reaches every child it started.

The seed killed only `accelerate launch` and left the real training process holding the GPU; here
every stop goes to the whole group: SIGTERM first (the trainer saves a state), SIGKILL after a grace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def start_process_group(
    cmd: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> subprocess.Popen:
    """Start `cmd` as the leader of a new session; its stdout and stderr go to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed by the OS when it exits
    try:
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )
    finally:
        log.close()


def signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """Send `sig` to the process group; False when it is already gone."""
    try:
        os.killpg(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_process_group(proc: subprocess.Popen, *, grace_s: float = 30.0) -> int | None:
    """Ask the whole group to stop (SIGTERM), wait `grace_s`, then SIGKILL what is left."""
    signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return proc.returncode
        time.sleep(0.1)
    signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    # Children that outlive the leader are still in its group: make sure they are gone too.
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        signal_group(proc, signal.SIGKILL)
        time.sleep(0.05)
    return proc.returncode
