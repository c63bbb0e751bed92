"""Upload checkpoints to the run store while training goes on, and say what is not yet safe.

One background thread owns all uploads, so a slow or failing storage never blocks a training step.
Each upload is retried with backoff; a newer state makes an older queued one obsolete (only the
newest state matters for resume). `steps_at_risk` is how much training a machine loss would cost now.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.lora_files import kohya_name
from ..storage.runstore import RunStore


@dataclass
class _Upload:
    kind: str  # "lora" | "state" | "file"
    path: Path
    step: int = 0
    epoch: int | None = None
    dest: str | None = None
    attempts: int = 0
    facts: dict[str, Any] = field(default_factory=dict)  # a state's own manifest fields


@dataclass
class SyncStatus:
    durable_step: int = 0
    uploaded: list[str] = field(default_factory=list)
    failures: int = 0
    last_error: str | None = None


class CheckpointSyncer:
    """Background uploader of LoRA files and full states into a RunStore."""

    def __init__(
        self,
        store: RunStore,
        *,
        fingerprint: str,
        state_extra: dict[str, Any] | None = None,
        keep_last_states: int = 2,
        keep_last_epochs: int = 0,
        retry_delays: tuple[float, ...] = (2, 5, 15, 30, 60),
        log: Callable[[str], None] = print,
        on_storage_error: Callable[[BaseException], None] | None = None,
        keep_local_states: int = 2,
    ):
        self.store = store
        self.fingerprint = fingerprint
        self.state_extra = state_extra or {}
        self.keep_last_states = keep_last_states
        self.keep_last_epochs = keep_last_epochs
        self.retry_delays = retry_delays
        self.log = log
        self.on_storage_error = on_storage_error
        self.keep_local_states = keep_local_states
        self.status = SyncStatus()
        self._queue: queue.Queue[_Upload | None] = queue.Queue()
        self._newest_state_step = -1
        self._local_states: list[Path] = []
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._worker, name="checkpoint-sync", daemon=True)
        self._thread.start()

    # --- producer side (the supervisor) ---------------------------------------------------------
    def submit_lora(self, path: str | Path, *, epoch: int | None, step: int = 0) -> None:
        name = self.store.checkpoint_name(epoch)
        self._put(_Upload("lora", Path(path), step=step, epoch=epoch, dest=f"checkpoints/{name}"))

    def submit_state(self, path: str | Path, *, step: int, epoch: int | None, facts: dict[str, Any] | None = None) -> None:
        self._newest_state_step = max(self._newest_state_step, step)
        self._put(_Upload("state", Path(path), step=step, epoch=epoch, facts=dict(facts or {})))

    def submit_file(self, path: str | Path, dest: str) -> None:
        self._put(_Upload("file", Path(path), dest=dest))

    def steps_at_risk(self, current_step: int) -> int:
        return max(0, current_step - self.status.durable_step)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is uploaded; False when `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._queue.unfinished_tasks == 0:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._idle.wait(timeout=0.2 if remaining is None else min(0.2, remaining))

    def close(self, timeout: float | None = None) -> bool:
        done = self.flush(timeout)
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=5)
        return done

    def _put(self, item: _Upload) -> None:
        self._idle.clear()
        self._queue.put(item)

    # --- worker side ----------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._upload_with_retries(item)
            finally:
                self._queue.task_done()
                if self._queue.unfinished_tasks == 0:
                    self._idle.set()

    def _upload_with_retries(self, item: _Upload) -> None:
        while not self._stop.is_set():
            if item.kind == "state" and item.step < self._newest_state_step and self._queue.unfinished_tasks > 1:
                return  # a newer state is queued: this one would be pruned right after upload
            if not item.path.exists():
                # The trainer prunes its local copies once newer ones exist; a newer one is queued.
                self.log(f"{item.path.name} was replaced by a newer checkpoint before it could be uploaded; skipped")
                return
            try:
                self._upload(item)
                return
            except Exception as exc:  # noqa: BLE001 - storage errors of every backend; never kill training
                item.attempts += 1
                self.status.failures += 1
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                if self.on_storage_error is not None:
                    try:
                        self.on_storage_error(exc)
                    except Exception as hook_exc:  # noqa: BLE001
                        self.log(f"storage recovery failed: {hook_exc}")
                delay = self.retry_delays[min(item.attempts - 1, len(self.retry_delays) - 1)]
                self.log(
                    f"upload of {item.path.name} failed ({self.status.last_error}); retrying in {delay:.0f} s. "
                    f"Training continues; steps not yet safe in storage start after step {self.status.durable_step}."
                )
                self._stop.wait(delay)

    def _upload(self, item: _Upload) -> None:
        if item.kind == "state":
            self.store.publish_state(
                item.path, item.step, epoch=item.epoch or 0, fingerprint=self.fingerprint,
                extra={**self.state_extra, **item.facts}, keep_last=self.keep_last_states,
            )
            self.status.durable_step = max(self.status.durable_step, item.step)
            self._prune_local_state(item.path)
        else:
            self.store.publish_file(item.path, item.dest or item.path.name)
            kohya = item.path.with_name(kohya_name(item.path.name))
            if item.kind == "lora" and item.dest and kohya.is_file():  # written beside it with --save-kohya-lora
                self.store.publish_file(kohya, kohya_name(item.dest))
            if item.kind == "lora" and item.epoch is not None:
                self.store.prune_checkpoints(self.keep_last_epochs)
        self.status.uploaded.append(item.dest or f"state/{item.step}")

    def _prune_local_state(self, path: Path) -> None:
        # Local disk on Colab/Kaggle is small; states already durable need not stay twice.
        self._local_states.append(path)
        while len(self._local_states) > self.keep_local_states:
            shutil.rmtree(self._local_states.pop(0), ignore_errors=True)
