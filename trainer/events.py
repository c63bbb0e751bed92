"""Trainer -> runner protocol: one JSON object per line, written by any backend, read by the runner.

Each kind is a class with one name per field, for every backend's producer and every consumer:
Plan (the run's total steps, where it starts), Step (progress), Checkpoint (a LoRA or a full state
landed on local disk), Validation (the validation loss at an epoch's end), Log (a human line),
Stopped (saved and stopped early, e.g. for the session deadline), Done (final LoRA written), Samples
(a sample grid, or why sampling failed), Error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal


@dataclass(kw_only=True)
class Event:
    """Base of every kind; `event` is the kind's name on the line."""

    event: ClassVar[str] = ""
    time: float = field(default_factory=time.time)

    @property
    def data(self) -> dict[str, Any]:
        """The fields without the time stamp (what a log line or a probe shows)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "time"}

    def to_line(self) -> str:
        return json.dumps({"event": self.event, "time": self.time, **self.data}, default=str)

    @classmethod
    def from_line(cls, line: str) -> "Event | None":
        """The event on one line; None for a line that is not one (a fragment, another program's output)."""
        try:
            raw = json.loads(line)
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        kind = KINDS.get(raw.pop("event", None))
        if kind is None:
            return None
        known = {f.name for f in dataclasses.fields(kind)}
        try:
            return kind(**{k: v for k, v in raw.items() if k in known})  # a newer writer's extra fields are left out
        except TypeError:  # a required field is missing
            return None


@dataclass(kw_only=True)
class Plan(Event):
    """The run's size, before the first step; `start_step` is where a resumed run's bar starts."""

    event: ClassVar[str] = "plan"
    total_steps: int | None = None
    start_step: int = 0
    steps_per_epoch: int | None = None
    epochs: int | None = None
    warmup_steps: int | None = None
    precision: str | None = None
    optimizer: str | None = None
    resume_state: str | None = None
    batches_per_epoch: int | None = None
    gradient_accumulation_steps: int | None = None
    images_x_repeats: int | None = None


@dataclass(kw_only=True)
class Step(Event):
    """Progress: the absolute optimizer step; `sec_per_step` and `loss` cover the steps since the last Step."""

    event: ClassVar[str] = "step"
    step: int
    total_steps: int | None = None
    loss: float | None = None
    sec_per_step: float | None = None
    lr: float | None = None
    epoch: int | None = None
    next_save_step: int | None = None


@dataclass(kw_only=True)
class Checkpoint(Event):
    """A LoRA file or a full state folder landed in the output folder. `epoch` counts finished epochs."""

    event: ClassVar[str] = "checkpoint"
    kind: Literal["lora", "state"]
    path: str
    step: int = 0
    epoch: int | None = None
    final: bool = False
    step_in_epoch: int | None = None  # 0 at an epoch's end
    epochs: int | None = None
    total_steps: int | None = None
    reported_step: int | None = None  # the backend's own count, where it differs from the absolute step


@dataclass(kw_only=True)
class Validation(Event):
    """The validation loss at an epoch's end (`epoch` finished epochs): a pure function of the weights.

    `held_out` says whether `images` were kept out of training or are a fixed subset of the training
    images; `best_epoch` is the epoch with the lowest loss so far on this set, `best_loss` its loss.
    """

    event: ClassVar[str] = "validation"
    step: int
    epoch: int
    loss: float
    images: int
    held_out: bool
    best_epoch: int | None = None
    best_loss: float | None = None


@dataclass(kw_only=True)
class Log(Event):
    event: ClassVar[str] = "log"
    message: str
    level: str = "info"
    epoch: int | None = None


@dataclass(kw_only=True)
class Stopped(Event):
    """Stopped on request with a state saved at `step`."""

    event: ClassVar[str] = "stopped"
    reason: str = "requested"
    step: int | None = None
    total_steps: int | None = None
    state: str | None = None


@dataclass(kw_only=True)
class Done(Event):
    """The final LoRA is written."""

    event: ClassVar[str] = "done"
    lora: str | None = None
    step: int | None = None
    loss: float | None = None
    state: str | None = None


@dataclass(kw_only=True)
class Samples(Event):
    """One sampling point: a grid PNG (base row over LoRA row) landed in the output folder, or sampling failed.

    `path` is the grid, None when sampling failed (`error` says why; training goes on). `base` lists the
    base model's images (the same at every sampling point of a run), stored once so a resume reuses them.
    """

    event: ClassVar[str] = "samples"
    path: str | None = None
    step: int = 0
    epoch: int | None = None
    prompts: list[str] = field(default_factory=list)
    base: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(kw_only=True)
class Error(Event):
    """`kind` "user" or "diverged": the message already says what to do."""

    event: ClassVar[str] = "error"
    message: str
    kind: str | None = None
    traceback: str | None = None
    exit_code: int | None = None
    oom: bool | None = None


KINDS: dict[str, type[Event]] = {k.event: k for k in (Plan, Step, Checkpoint, Validation, Log, Stopped, Done, Samples, Error)}

EventSink = Callable[[Event], None]


class JsonLinesSink:
    """Appends events to a file (flushed per line so a reader in another process sees them at once)."""

    def __init__(self, path: str | Path | IO[str]):
        self._own = not hasattr(path, "write")
        self._fh = open(path, "a", encoding="utf-8", buffering=1) if self._own else path  # noqa: SIM115

    def __call__(self, event: Event) -> None:
        self._fh.write(event.to_line() + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()


def emit(sink: EventSink | None, event: Event) -> Event:
    if sink is not None:
        sink(event)
    return event


class JsonLinesParser:
    """Events from a stream of JSON lines fed in chunks of any size (the native trainer's own output)."""

    def __init__(self):
        self._partial = ""

    def feed(self, chunk: str) -> list[Event]:
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()  # a line still being written
        return [e for e in (Event.from_line(line) for line in lines if line.strip()) if e is not None]


def read_events(path: str | Path) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            event = Event.from_line(line)
            if event is not None:
                yield event
