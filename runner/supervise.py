"""Watch a trainer process through its events file: progress, checkpoint sync, the session deadline.

Every backend writes the same JSON-lines events (trainer/events.py). This loop reads them as they
land, hands checkpoints to the syncer, feeds progress to the display, and asks the trainer to save
and stop (SIGTERM to its group) when the session guard says time is running out.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.processes import signal_group, stop_process_group
from ..trainer.backend import EXIT_STOPPED
from ..trainer.events import Checkpoint, Done, Error, Event, JsonLinesParser, Plan, Samples, Step, Stopped, Validation
from ..trainer.sample_plan import STORE_BASE_SAMPLES
from .sync import CheckpointSyncer



@dataclass
class Outcome:
    returncode: int | None = None
    final_lora: str | None = None
    stopped: bool = False
    stop_reason: str | None = None
    error: str | None = None
    error_kind: str | None = None  # "user", "diverged": the message already says what to do
    step: int = 0
    total_steps: int | None = None
    last_loss: float | None = None
    sec_per_step: float | None = None  # the last interval's: what the deadline guard needs now
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # sample grids written (local paths)
    sampling_errors: list[tuple[int, str]] = field(default_factory=list)  # (step, why) of each failed sampling point
    validation: list[Validation] = field(default_factory=list)  # the validation loss at each epoch end
    # Step events come every few steps, each with that interval's seconds per step. The first interval
    # holds the first step's compile and warm-up, so the session's average leaves it out when it can.
    warmup: tuple[int, float] | None = None  # (steps, seconds) of the first interval
    timed_steps: int = 0
    timed_seconds: float = 0.0
    timed_from: int = 0  # the step of the last step event (or the start step)

    @property
    def average_sec_per_step(self) -> float | None:
        """Seconds per step over this session's steps after the first interval (over all, if that is all)."""
        if self.timed_steps:
            return self.timed_seconds / self.timed_steps
        if self.warmup:
            return self.warmup[1] / self.warmup[0]
        return self.sec_per_step

    def add_interval(self, step: int, sec_per_step: float | None) -> None:
        """Count the steps since the last step event at this event's rate (none without a rate)."""
        steps = step - self.timed_from
        if sec_per_step is not None and steps > 0:
            if self.warmup is None:
                self.warmup = (steps, sec_per_step * steps)
            else:
                self.timed_steps += steps
                self.timed_seconds += sec_per_step * steps
        self.timed_from = max(self.timed_from, step)

    @property
    def completed(self) -> bool:
        # A "done" event means the final LoRA is written, even if a late stop signal changed the exit code.
        return self.final_lora is not None and self.error is None


class EventTail:
    """Reads complete event lines appended to a file by another process."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._parser = JsonLinesParser()

    def read(self) -> list[Event]:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
            self._offset = fh.tell()
        return self._parser.feed(chunk)


def supervise(
    proc: subprocess.Popen,
    events_path: Path,
    *,
    syncer: CheckpointSyncer | None = None,
    should_stop: Callable[[float | None], bool] | None = None,
    on_event: Callable[[Event, Outcome], None] | None = None,
    poll_s: float = 0.5,
    stop_grace_s: float = 120.0,
) -> Outcome:
    """Follow `proc` until it exits; on any interruption stop its whole group first."""
    outcome = Outcome()
    tail = EventTail(events_path)
    stop_sent_at: float | None = None

    def take_events() -> None:
        for event in tail.read():
            _apply(event, outcome, syncer)
            if on_event is not None:
                on_event(event, outcome)

    try:
        while True:
            take_events()
            if proc.poll() is not None:
                take_events()  # what it wrote between the last read and its exit
                break
            if stop_sent_at is None and should_stop is not None and should_stop(outcome.sec_per_step):
                outcome.stop_reason = outcome.stop_reason or "deadline"
                signal_group(proc, signal.SIGTERM)
                stop_sent_at = time.monotonic()
            elif stop_sent_at is not None and time.monotonic() - stop_sent_at > stop_grace_s:
                stop_process_group(proc, grace_s=1)
            time.sleep(poll_s)
    except BaseException:
        # Cell interrupted, flow cancelled, task crashed: never leave the trainer holding the GPU. The
        # trainer saves a state on SIGTERM; read its last events so that state is synced too.
        stop_process_group(proc, grace_s=min(stop_grace_s, 60))
        for event in tail.read():
            _apply(event, outcome, syncer)
        raise
    outcome.returncode = proc.returncode
    if outcome.returncode == EXIT_STOPPED:
        outcome.stopped = True
    return outcome


def _is_epoch_lora(path: str) -> bool:
    """Epoch LoRAs are `<name>-NNNNNN.safetensors`; the final one is published on "done" instead."""
    return re.search(r"-\d{6}\.safetensors$", path) is not None


def _apply(event: Event, outcome: Outcome, syncer: CheckpointSyncer | None) -> None:
    match event:
        case Plan():
            outcome.total_steps = event.total_steps if event.total_steps is not None else outcome.total_steps
            # A resumed run has done these steps already, even if it stops before its first step event.
            outcome.step = max(outcome.step, event.start_step or 0)
            outcome.timed_from = max(outcome.timed_from, outcome.step)
        case Step():
            outcome.step = event.step
            outcome.total_steps = event.total_steps or outcome.total_steps
            if event.sec_per_step is not None:
                outcome.sec_per_step = float(event.sec_per_step)
            outcome.add_interval(outcome.step, event.sec_per_step)
            if event.loss is not None:
                outcome.last_loss = float(event.loss)
                outcome.losses.append((outcome.step, outcome.last_loss))
        case Checkpoint(kind="state") if syncer is not None:
            # What the next run needs to tell "resume" from "already complete" and to name the epoch.
            facts = {"total_steps": event.total_steps or outcome.total_steps, "step_in_epoch": event.step_in_epoch,
                     "epochs": event.epochs}
            syncer.submit_state(event.path, step=event.step, epoch=event.epoch,
                                facts={k: v for k, v in facts.items() if v is not None})
        case Checkpoint(kind="lora") if syncer is not None and _is_epoch_lora(event.path):
            syncer.submit_lora(event.path, epoch=event.epoch, step=event.step)
        case Stopped():
            outcome.stopped = True
            # Step events come every LOG_EVERY steps: the step the state was saved at may be newer.
            outcome.step = max(outcome.step, event.step or 0)
            # The supervisor's own reason (the deadline) says more than the trainer's ("SIGTERM").
            outcome.stop_reason = outcome.stop_reason or event.reason
        case Done():
            outcome.final_lora = event.lora
            outcome.step = event.step or outcome.step
            if syncer is not None and outcome.final_lora:
                syncer.submit_lora(outcome.final_lora, epoch=None, step=outcome.step)
        case Validation():
            outcome.validation.append(event)
        case Samples():
            if event.path:
                outcome.samples.append(event.path)
            if event.error:
                outcome.sampling_errors.append((event.step, event.error))
            if syncer is not None:  # a grid is stored like a checkpoint; the base row once, when it was made
                if event.path:
                    syncer.submit_file(event.path, f"samples/{Path(event.path).name}")
                for base in event.base:
                    syncer.submit_file(base, f"{STORE_BASE_SAMPLES}/{Path(base).name}")
        case Error():
            outcome.error = event.message
            outcome.error_kind = event.kind
