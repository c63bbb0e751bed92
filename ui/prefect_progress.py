"""Training progress in Prefect: a progress artifact and throttled log lines (Cloud's free tier counts them)."""

from __future__ import annotations

import logging
import time

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from ..trainer.events import Checkpoint, Error, Event, Log, Step, Stopped


class PrefectProgress:
    """Turns trainer events into a progress artifact and at most one log line per `every_s` seconds."""

    def __init__(self, key: str, *, every_s: float = 60.0):
        self.logger = get_run_logger()
        self.every_s = every_s
        self._last_log = 0.0
        self._last_pct = -1
        self._artifact = create_progress_artifact(progress=0.0, key=key, description="training progress")

    def __call__(self, event: Event, _outcome=None) -> None:
        match event:
            case Step(total_steps=total) if total:
                pct = int(100 * event.step / total)
                if pct != self._last_pct:
                    update_progress_artifact(self._artifact, progress=float(pct))
                    self._last_pct = pct
                now = time.monotonic()
                if now - self._last_log >= self.every_s or event.step == total:
                    self._last_log = now
                    self.logger.info(
                        "step %s/%s%s%s", event.step, total,
                        f", loss {event.loss:.4f}" if event.loss is not None else "",
                        f", {event.sec_per_step:.2f} s/step" if event.sec_per_step else "",
                    )
            case Checkpoint():
                self.logger.info("checkpoint (%s) at step %s", event.kind, event.step)
            case Log():  # the trainer's own lines (caches, resume), at the trainer's level
                level = logging.getLevelName(event.level.upper())
                self.logger.log(level if isinstance(level, int) else logging.INFO, "%s", event.message)
            case Stopped():
                self.logger.warning("trainer stopped: %s", event.reason)
            case Error():
                self.logger.warning("trainer error: %s", event.message)
