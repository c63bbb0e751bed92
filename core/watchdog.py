"""A child that dies with its parent: a watchdog process ends a process group once the process that started it is gone.

A trainer or a per-command Prefect server runs in its own session (so a Ctrl-C or a stop reaches its
whole group, and a terminal's Ctrl-C does not kill the server under the flow). The price: when the
process that started it dies without cleaning up (SIGKILL, the OOM killer, a worker killing its
`prefect.engine` child), nothing stops the group, and a second run then trains beside the orphan.

Linux's PR_SET_PDEATHSIG would signal only the one child, and it fires when the parent *thread* that
forked it exits; a trainer is a tree of processes (a launcher and its data-parallel workers, a wrapper
and sd-scripts). So a small watchdog process per guarded group polls its own parent pid instead: when
that changes (the parent is gone and the watchdog was reparented), it sends SIGTERM to the group, then
SIGKILL after a grace. It exits by itself when the group has ended. Portable to every POSIX system.

Run as `python -m anima_lora_flow.core.watchdog PARENT_PID PGID GRACE_S`; it imports nothing heavy.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from .processes import group_alive, stop_group

POLL_S = 0.5


def watch(parent_pid: int, pgid: int, grace_s: float, *, poll_s: float = POLL_S) -> str:
    """Wait until the group ends ("ended") or the parent dies ("parent died": the group is stopped first)."""
    while True:
        if not _leader_running(pgid) and not group_alive(pgid):  # the cheap test first: no /proc scan per poll
            return "ended"
        if os.getppid() != parent_pid:
            stop_group(pgid, grace_s)
            return "parent died"
        time.sleep(poll_s)


def _leader_running(pgid: int) -> bool:
    """Whether the group's leader (pid == pgid) is running, not a zombie; False where /proc cannot tell."""
    try:
        with open(f"/proc/{pgid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str]) -> int:
    parent_pid, pgid, grace_s = int(argv[0]), int(argv[1]), float(argv[2])
    # The terminal's Ctrl-C goes to the foreground group; the watchdog is in a session of its own, and
    # the group it guards handles its own signals.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(parent_pid, pgid, grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
