"""Trainer -> flow protocol: one JSON object per line, written by any backend, read by the flow.

Kinds: "plan" (total steps), "step" (progress), "checkpoint" (a LoRA or a full state landed on local
disk), "log" (a human line), "stopped" (saved and stopped early, e.g. for the session deadline),
"done" (final LoRA written), "error".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class Event:
    event: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_line(self) -> str:
        return json.dumps({"event": self.event, "time": self.time, **self.data}, default=str)

    @classmethod
    def from_line(cls, line: str) -> "Event | None":
        try:
            raw = json.loads(line)
        except ValueError:
            return None
        if not isinstance(raw, dict) or "event" not in raw:
            return None
        kind = raw.pop("event")
        stamp = raw.pop("time", time.time())
        return cls(kind, raw, stamp)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


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


def emit(sink: EventSink | None, kind: str, /, **data: Any) -> Event:
    # positional-only: "checkpoint" events carry a `kind` field ("lora" | "state") in their data
    event = Event(kind, data)
    if sink is not None:
        sink(event)
    return event


def read_events(path: str | Path) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            event = Event.from_line(line)
            if event is not None:
                yield event
