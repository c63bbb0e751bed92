"""One training run per project at a time: a lock file in the run store, kept fresh by a heartbeat.

Two runs of one project would resume from each other's half-written states and overwrite each
other's LoRAs (a Colab cell run again while the first run still trains, or two machines sharing a
bucket). The lock lives beside the states, so it covers every machine that writes there. A run that
died cannot remove its lock: on its own machine a dead pid frees it at once; from elsewhere, a lock
whose heartbeat is older than STALE_S is taken over. Object stores have no atomic create, so two
runs starting in the same second could both win; that window is accepted.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.processes import pid_alive
from ..errors import UserInputError, setting
from .runstore import RunStore

LOCK_FILE = "LOCK.json"
HEARTBEAT_S = 30.0
STALE_S = 150.0  # five missed heartbeats: the holder is gone

log = logging.getLogger(__name__)


@dataclass
class ProjectLock:
    """Held while a run trains; `release` stops the heartbeat and removes the file if it is still ours."""

    store: RunStore
    record: dict
    clock: Callable[[], float] = time.time
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start_heartbeat(self, every_s: float = HEARTBEAT_S) -> None:
        def beat():
            while not self._stop.wait(every_s):
                self.beat()

        self._thread = threading.Thread(target=beat, name="project-lock-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self.record["heartbeat"] = self.clock()
        try:
            _write(self.store, self.record)
        except Exception as exc:  # noqa: BLE001 - storage hiccups must not stop training; the next beat retries
            log.debug("lock heartbeat failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            holder = read_lock(self.store)
            if holder and holder.get("run_id") == self.record["run_id"]:
                self.store.fs.rm(self.store.path(LOCK_FILE))
        except Exception as exc:  # noqa: BLE001 - a lock left behind goes stale by itself
            log.debug("could not remove the project lock: %s", exc)


def acquire_project_lock(store: RunStore, run_id: str, *, clock: Callable[[], float] = time.time,
                         stale_s: float = STALE_S) -> ProjectLock:
    """Take the project's lock, or raise UserInputError naming the run that holds it.

    Raises:
        UserInputError: another live run of this project writes to this storage.
    """
    now = clock()
    holder = read_lock(store)
    if holder and holder.get("run_id") != run_id:
        why_free = _why_free(holder, now, stale_s)
        if why_free is None:
            age = now - float(holder.get("heartbeat", 0))
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(holder.get("started", now))))
            raise UserInputError(
                f"project {store.project!r} is being trained by run {holder.get('run_id')} on {holder.get('host')} "
                f"(pid {holder.get('pid')}) since {started}, last heard from {age:.0f} s ago; wait for it to finish "
                f"or use another {setting('project_name')} (a run that died frees the project {stale_s / 60:.1f} min after its "
                "last heartbeat)",
                field="project_name",
            )
        log.info("taking over the lock of run %s: %s", holder.get("run_id"), why_free)
    record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
    _write(store, record)
    return ProjectLock(store, record, clock)


def read_lock(store: RunStore) -> dict | None:
    try:
        if not store.exists(LOCK_FILE):
            return None
        with store.fs.open(store.path(LOCK_FILE), "rb") as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return None  # unreadable: treat as absent rather than block every future run
    return record if isinstance(record, dict) else None


def _why_free(holder: dict, now: float, stale_s: float) -> str | None:
    """Why a lock no longer holds (its process or heartbeat is gone); None while its run may be alive."""
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid") or 0)
        if pid == os.getpid():
            return "an earlier run of this same process"
        if not pid_alive(pid):
            return f"its process {pid} on this machine is gone"
    age = now - float(holder.get("heartbeat", 0))
    return f"no heartbeat for {age:.0f} s" if age > stale_s else None


def _write(store: RunStore, record: dict) -> None:
    store.write_bytes(LOCK_FILE, json.dumps(record, indent=2).encode())
