"""One live progress bar for training, drawn from trainer events (no wall of repeated tqdm lines)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from ..core.formatting import format_duration
from ..errors import in_notebook_kernel
from ..trainer.events import Checkpoint, Done, Error, Event, Log, Plan, Samples, Step, Stopped


def redraws_in_place(file) -> bool:
    """Whether `file` shows a carriage return as a redraw (a terminal, a Jupyter/Colab cell), not as a new copy."""
    if getattr(file, "isatty", lambda: False)():
        return True
    # A notebook cell's stdout is no tty but renders "\r" in place; a log file or a pipe keeps every copy.
    return file in (sys.stdout, sys.__stdout__) and in_notebook_kernel()


def _percent(step: int, total: int | None) -> str:
    return f" ({100 * step // total}%)" if total else ""


class ConsoleProgress:
    """Renders step events as one progress line: step, loss, s/step, ETA, next save, session time left.

    Where the output redraws in place (a terminal, a notebook cell) it is a tqdm bar. Elsewhere (a log
    file, a pipe, Kaggle's saved output) every redraw would stay as another copy of the line, so it
    prints plain lines instead, each step at most once and at most one line per `every_s` seconds.
    """

    def __init__(
        self,
        *,
        session_left: Callable[[], float | None] | None = None,
        file=None,
        echo: Callable[[str], None] | None = None,
        echo_checkpoints: bool = True,
        echo_messages: bool = True,
        in_place: bool | None = None,
        every_s: float = 30.0,
        redraw_s: float = 1.0,
    ):
        # False where a Prefect log reports the trainer's own lines and stops (ui/prefect_progress.py): once is enough.
        self.echo_checkpoints, self.echo_messages = echo_checkpoints, echo_messages
        self._bar: tqdm | None = None
        self._file = file or sys.stdout
        self._in_place = redraws_in_place(self._file) if in_place is None else in_place
        self._every_s, self._redraw_s = every_s, redraw_s
        self._session_left = session_left
        self._echo = echo or self._write
        self._last_step = 0
        self._total: int | None = None
        self._printed_step: int | None = None
        self._printed_at = -math.inf
        self.started = time.monotonic()

    def __call__(self, event: Event, _outcome=None) -> None:
        match event:
            case Plan():
                self._open(event.total_steps or 0, event.start_step or 0)
            case Step():
                self._on_step(event)
            case Checkpoint() if self.echo_checkpoints:
                what = "LoRA" if event.kind == "lora" else "resumable state"
                self._echo(f"saved {what} at step {event.step}")
            case Stopped() if self.echo_messages:
                self._echo(f"trainer stopped after saving its state ({event.reason})")
            case Log() if self.echo_messages:
                self._echo(event.message)
            case Samples():  # always: where to look at what the LoRA learned (a notebook cell also shows it)
                self._echo(f"sample grid at step {event.step}: {event.path}" if event.path
                           else f"sampling at step {event.step} failed, training goes on: {event.error}")
            case Done() | Error():
                self.close()

    def _write(self, line: str) -> None:
        if self._in_place:
            tqdm.write(line, file=self._file)  # clears the bar, writes the line, redraws the bar below it
        else:
            self._line(line)

    def _line(self, line: str) -> None:
        # Not print(): inside a flow with log_prints, Prefect turns a print to stdout into an INFO log record.
        self._file.write(line + "\n")
        self._file.flush()

    def _open(self, total: int, start: int) -> None:
        self.close()
        self._total, self._last_step = total, start
        if not self._in_place:
            # Where the run starts (a resumed one mid-way), as the bar's first draw shows it; not throttled,
            # so the first step event is printed too.
            self._line(f"training: step {start}/{total or '?'}{_percent(start, total)}")
            self._printed_step = start
        else:
            self._bar = tqdm(
                total=total, initial=start, desc="training", unit="step", file=self._file, dynamic_ncols=True,
                mininterval=self._redraw_s, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total}{postfix}",
            )

    def _on_step(self, event: Step) -> None:
        step = event.step
        if self._total is None:
            self._open(event.total_steps or step, step)
        if not self._in_place:
            self._print_step(step, event)
        else:
            # The postfix first: update() draws, so the other order shows this step with the last one's numbers.
            self._bar.set_postfix_str(self.postfix(event), refresh=False)
            self._bar.update(max(0, step - self._last_step))
        self._last_step = step

    def _print_step(self, step: int, event: Step) -> None:
        total = event.total_steps or self._total or 0
        now = time.monotonic()
        if step == self._printed_step or (now - self._printed_at < self._every_s and step != total):
            return
        self._printed_step, self._printed_at = step, now
        postfix = self.postfix(event)
        self._line(f"training: step {step}/{total or '?'}{_percent(step, total)}{', ' + postfix if postfix else ''}")

    def postfix(self, event: Step) -> str:
        total = event.total_steps or self._total
        sec = event.sec_per_step
        parts = []
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if sec:
            parts.append(f"{sec:.2f} s/step")
            if total:
                parts.append(f"ETA {format_duration((total - event.step) * sec)}")
        if event.next_save_step:
            parts.append(f"next save @{event.next_save_step}")
        left = self._session_left() if self._session_left else None
        if left is not None:
            parts.append(f"session left {format_duration(left)}")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._total = None
