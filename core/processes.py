"""Processes: a child in its own process group, whether a pid is alive, a free local port for a server.

A trainer runs in its own process group, so a stop reaches every child it started. The seed killed
only `accelerate launch` and left the real training process holding the GPU; here every stop goes to
the whole group: SIGTERM first (a trainer saves a state), SIGKILL after a grace. A watchdog
(core/watchdog.py) ends the group when the process that started it dies, however it dies.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


ORPHAN_GRACE_S = 5.0  # SIGTERM to SIGKILL for a group whose parent died: nobody will sync what it saves


def start_process_group(
    cmd: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> subprocess.Popen:
    """Start `cmd` as the leader of a new session, guarded (it ends when this process dies); its stdout
    and stderr go to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child; our copy is closed right away
    try:
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )
    finally:
        log.close()
    guard_group(proc)
    return proc


def guard_group(proc: subprocess.Popen, *, grace_s: float = ORPHAN_GRACE_S) -> subprocess.Popen:
    """Start a watchdog that stops `proc`'s process group (SIGTERM, SIGKILL after `grace_s`) once this
    process is gone, and exits by itself when the group ends. `proc` must lead its own group
    (start_new_session=True). Returns the watchdog's process."""
    command = [sys.executable, "-m", f"{__package__}.watchdog", str(os.getpid()), str(proc.pid), str(grace_s)]
    # Its own session: a terminal's Ctrl-C or a stop sent to the guarded group must not end the guard.
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """Send `sig` to the process group led by `proc`; False when it is already gone."""
    try:
        os.killpg(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it), for a server or a rendezvous to listen on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies hold no memory or GPU)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc"):
        return True
    return any(entry.isdigit() and _pgid_and_state(entry) == (pgid, False) for entry in os.listdir("/proc"))


def stop_process_group(proc: subprocess.Popen, *, grace_s: float = 30.0) -> int | None:
    """stop_group on our own child's group, then reap the leader; returns its exit code."""
    stop_group(proc.pid, grace_s)
    proc.wait()  # the leader is dead by now (a zombie does not count as alive in group_alive)
    return proc.returncode


def stop_group(pgid: int, grace_s: float, *, kill_wait_s: float = 5.0) -> bool:
    """SIGTERM the whole group, wait `grace_s`, then SIGKILL whatever is left; whether the group is gone.

    The one stop of a trainer's, a server's or a guarded group: our child (stop_process_group), a group
    found by its pid (`anima-lora ui --stop`), or a watchdog's orphaned group.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return True
        deadline = time.monotonic() + wait_s
        while group_alive(pgid):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        else:
            return True
    return not group_alive(pgid)


def _pgid_and_state(pid: str) -> tuple[int, bool] | None:
    """(process group, is zombie) of a /proc entry, or None if it vanished."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[2]), fields[0] == "Z"
