"""Turns sd-scripts console output into the project's progress events (anima-internals §A5).

tqdm redraws its `steps:` bar with carriage returns and no newline, so the stream is split on
both `\r` and `\n`; a bar is one progress update, never one line per redraw.

sd-scripts draws each step's bar twice: `progress_bar.update(1)` first, still showing the previous
step's `avr_loss`, then `set_postfix(avr_loss=...)` with this step's (train_network.py, 48d368fa).
Step saves and sampling run between the two. So a step's event waits for its second draw; `step`
(what checkpoints and stops report) moves at the first.

The same holds for the epoch-end validation bar (`epoch validation steps`, train_network.py): its last
`update(1)` draws the average without the last loss, its `set_postfix` with it. Its loss is reported once
something else is printed, from the last complete draw. A sampling point ("Generating sample images at
step N") is complete when training moves on; then `on_samples` turns sd-scripts' images into events.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..events import Checkpoint, Event, Log, Plan, Step, Validation

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_BAR = re.compile(r"^steps:\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<info>[^\]]*)\]\s*$")
_RATE = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>s/it|it/s)")
_LOSS = re.compile(r"avr_loss=(?P<loss>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))")
_TOTAL = re.compile(r"total optimization steps / .*?:\s*(\d+)")
_BATCHES = re.compile(r"num batches per epoch / .*?:\s*(\d+)")
_EPOCHS = re.compile(r"num epochs / .*?:\s*(\d+)")
_IMAGES = re.compile(r"num train images \* repeats / .*?:\s*(\d+)")
_ACCUM = re.compile(r"gradient accumulation steps / .*?=\s*(\d+)")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+)$")
_SAVING = re.compile(r"^saving checkpoint: (?P<path>.+)$")
_STATE = re.compile(r"^save train state to (?P<file>.+) at epoch (?P<epoch>\d+) step (?P<step>\d+)$")
_LOADED = re.compile(r"^load train state from .*'current_step': (?P<step>\d+)")
_STATE_DONE = re.compile(r"^Random states saved in (?P<file>.+)$")  # accelerate's last save_state line
_SKIPPING = re.compile(r"^skipping (?P<step>\d+) steps")
_EPOCH_FILE = re.compile(r"-(\d{6})\.[A-Za-z]+$")
_STEP_FILE = re.compile(r"-step(\d{8})\.[A-Za-z]+$")
_SAMPLING = re.compile(r"^Generating sample images at step (?P<step>\d+)$")
_VAL_BAR = re.compile(r"^epoch validation steps:\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<info>[^\]]*)\]\s*$")
_VAL_LOSS = re.compile(r"val_epoch_avg_loss=(?P<loss>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))")
_VAL_IMAGES = re.compile(r"num validation images \* repeats / .*?:\s*(\d+)")
_NOTABLE = ("running training", "resume training from", "model saved.", "saving last state.", "removing old checkpoint")


@dataclass
class Piece:
    """One line or one progress redraw of the console, with the events it produced."""

    text: str
    progress: bool
    events: list[Event] = field(default_factory=list)
    echo: bool = True  # False: no console text, only events (the last step, reported at the end)


def is_progress(text: str) -> bool:
    """True for a tqdm `steps:` bar redraw."""
    return bool(_BAR.match(_ANSI.sub("", text).strip()))


class ConsoleParser:
    """Streaming parser: `feed` any chunk (partial lines, `\\r` redraws) and get events back.

    Steps are reported absolute. After a resume sd-scripts restarts its bar (and its own step
    counter) at the resume point, so `initial_step` (or the "load train state" line) is added back.
    """

    def __init__(self, *, initial_step: int = 0, skip_until_initial_step: bool = True,
                 on_samples: Callable[[int, int | None], list[Event]] | None = None, validation_held_out: bool = False,
                 validation_history: list[dict] | None = None):
        self.resumed_step = initial_step  # optimizer steps done before this process started
        self.skip = skip_until_initial_step
        self.total: int | None = None
        self.epoch: int | None = None
        self.num_epochs: int | None = None
        self.batches_per_epoch: int | None = None
        self.grad_accum = 1
        self.images: int | None = None
        self.step = initial_step  # absolute step of the latest bar
        self.loss: float | None = None  # of the latest reported step
        self.sec_per_step: float | None = None
        self.final_lora: str | None = None
        self.checkpoints: list[Event] = []
        self._pending_state: dict | None = None
        self._offset: int | None = None
        self._plan_sent = False
        self._buffer = ""
        self._shown_partial = ""
        self._unreported: dict | None = None  # the latest step, drawn but not yet reported
        # (absolute step, epoch) -> events, called when sd-scripts has written a sampling point's images
        self.on_samples = on_samples
        self._sampling: dict | None = None  # a sampling point under way
        self.validation_held_out = validation_held_out  # what Validation events say of the images
        self.validation_images: int | None = None
        self.validation_history: list[dict] = list(validation_history or [])  # {"step", "epoch", "loss"}, for the best epoch
        self._validation: dict | None = None  # the latest complete draw of the epoch validation bar
        self._validated: tuple[int, int] | None = None  # (epoch, step) of the last Validation sent
        self._val_n = 0  # the latest validation draw's count

    # --- splitting -------------------------------------------------------------------------
    def feed(self, chunk: str) -> list[Event]:
        """Events from a chunk of console output (any size, any split)."""
        return [e for piece in self.feed_pieces(chunk) for e in piece.events]

    def feed_pieces(self, chunk: str) -> list[Piece]:
        """Like `feed`, but keeps each line / redraw so a caller can echo it."""
        self._buffer += chunk
        pieces = []
        while True:
            cut = _first_break(self._buffer)
            if cut is None:
                break
            text, self._buffer = self._buffer[: cut[0]], self._buffer[cut[1] :]
            if self._already_shown(text):
                self._shown_partial = ""  # this redraw was already reported before its terminator
                continue
            self._shown_partial = ""
            if text or cut[2] == "\n":
                pieces.append(self._parse(text))
        # tqdm writes "\r<bar>" so the newest bar waits for the next redraw: report it now.
        pending = self._buffer.removesuffix("\r")
        if pending and is_progress(pending):
            if not self._already_shown(pending):
                pieces.append(self._parse(pending))
            self._shown_partial = pending
        return pieces

    def flush(self) -> list[Piece]:
        """Whatever is left after the stream ended, and the last step if it was never reported."""
        rest, self._buffer = self._buffer.removesuffix("\r"), ""
        pieces = [] if not rest or self._already_shown(rest) else [self._parse(rest)]
        ended = self._phase_ends("", ended_stream=True)
        if ended:
            pieces.append(Piece("", False, ended, echo=False))
        if self._unreported is not None:
            # A normal exit redraws the bar when tqdm closes, so a step drawn once was cut short
            # (stopped, crashed) before set_postfix: the loss it shows is the previous step's.
            self._unreported["loss"] = None
            event = self._report()
            if pieces:
                pieces[-1].events.append(event)
            else:
                pieces.append(Piece("", False, [event], echo=False))
        return pieces

    def _already_shown(self, text: str) -> bool:
        # tqdm pads a shorter redraw with spaces, which may come in a later chunk: still one draw.
        return bool(self._shown_partial) and text.rstrip() == self._shown_partial.rstrip()

    # --- parsing -----------------------------------------------------------------------------
    def _parse(self, raw: str) -> Piece:
        text = _ANSI.sub("", raw).strip()
        if val := _VAL_BAR.match(text):
            return Piece(raw, True, self._on_validation_bar(val))
        bar = _BAR.match(text)
        ended = self._phase_ends(text, is_bar=bool(bar)) if text else []
        # A state is announced before accelerate writes it; report it once sd-scripts moves on.
        done = ended + self._state_done(text, bool(bar))
        if bar:
            return Piece(raw, True, done + self._on_bar(bar))
        return Piece(raw, False, done + self._on_line(text))

    def _phase_ends(self, text: str, is_bar: bool = False, ended_stream: bool = False) -> list[Event]:
        """Events of a validation or sampling point that this line shows to be over."""
        events = []
        if self._validation is not None:  # nothing but its own bar is drawn while validation runs
            events += self._report_validation()
        moved_on = ended_stream or is_bar or any(p.match(text) for p in (_EPOCH, _SAVING, _STATE, _SAMPLING))
        if self._sampling is not None and (moved_on or text.startswith(_NOTABLE)):
            point, self._sampling = self._sampling, None
            if self.on_samples is not None:
                events += self.on_samples(point["step"], point["epoch"])
        return events

    def _on_validation_bar(self, bar: re.Match) -> list[Event]:
        loss = _VAL_LOSS.search(bar["info"])
        n, total = int(bar["n"]), int(bar["total"])
        # The set_postfix draw comes last: keep the newest. The previous epoch's bar, closed when its
        # variable is reassigned to the new bar, redraws its end once more just after the new bar's
        # 0/N: a complete draw counts only right after this bar's own last steps.
        complete = loss is not None and n == total > 0 and self._val_n >= total - 1
        self._validation = {"loss": float(loss["loss"])} if complete else None
        self._val_n = n
        return []

    def _report_validation(self) -> list[Event]:
        loss, self._validation = self._validation["loss"], None
        epoch = self.epoch or 0
        if self._validated == (epoch, self.step):
            return []  # the bar's closing redraw at exit, after its loss went out
        self._validated = (epoch, self.step)
        self.validation_history = [h for h in self.validation_history if h["epoch"] != epoch]
        self.validation_history.append({"step": self.step, "epoch": epoch, "loss": loss})
        best = min(self.validation_history, key=lambda h: (h["loss"], h["epoch"]))  # a tie: the earlier epoch
        return [Validation(step=self.step, epoch=epoch, loss=loss, images=self.validation_images or 0,
                           held_out=self.validation_held_out, best_epoch=best["epoch"], best_loss=best["loss"])]

    def _state_done(self, text: str, is_bar: bool) -> list[Event]:
        if self._pending_state is None:
            return []
        finished = _STATE_DONE.match(text)
        moved_on = is_bar or _EPOCH.match(text) or _SAVING.match(text) or text.startswith("model saved.")
        if not (moved_on or (finished and os.path.dirname(finished["file"].strip()) == self._pending_state["path"])):
            return []
        event = Checkpoint(**self._pending_state)
        self._pending_state = None
        self.checkpoints.append(event)
        return [event]

    def _on_line(self, text: str) -> list[Event]:
        for pattern, attr in ((_BATCHES, "batches_per_epoch"), (_EPOCHS, "num_epochs"), (_IMAGES, "images"),
                              (_VAL_IMAGES, "validation_images")):
            match = pattern.search(text)
            if match:
                setattr(self, attr, int(match.group(1)))
                return []
        if match := _ACCUM.search(text):
            self.grad_accum = int(match.group(1))
            return []
        if match := _TOTAL.search(text):
            self.total = int(match.group(1))
            return [self._plan()]
        if match := _LOADED.match(text):
            self.resumed_step = int(match["step"])
            return [Log(message=text)]
        if match := _SKIPPING.match(text):
            self.resumed_step, self.skip = int(match["step"]), True
            return [Log(message=text)]
        if match := _EPOCH.match(text):
            self.epoch, self.num_epochs = int(match.group(1)), int(match.group(2))
            return [Log(message=text, epoch=self.epoch)]
        if match := _SAVING.match(text):
            return [self._checkpoint_lora(match["path"].strip())]
        if match := _STATE.match(text):
            return self._checkpoint_state(match)
        if match := _SAMPLING.match(text):
            # sd-scripts' step 0 is the sampling before training (sample_at_first): the base row
            self._sampling = {"step": self.step, "epoch": 0 if int(match["step"]) == 0 else self.epoch}
            return []
        if text.startswith(_NOTABLE):
            return [Log(message=text)]
        return []

    def _plan(self) -> Event:
        self._plan_sent = True
        return Plan(total_steps=self.total, epochs=self.num_epochs, batches_per_epoch=self.batches_per_epoch,
                    gradient_accumulation_steps=self.grad_accum, images_x_repeats=self.images, start_step=self.resumed_step)

    def _step_offset(self) -> int:
        """Absolute step of the bar's 0 (see sd-scripts train_network.py, resume branch)."""
        if self.resumed_step <= 0:
            return 0
        if self.skip or not self.batches_per_epoch:
            return self.resumed_step
        # Without skipping, sd-scripts restarts the interrupted epoch from its first batch.
        per_epoch = math.ceil(self.batches_per_epoch / self.grad_accum)
        return (self.resumed_step // per_epoch) * per_epoch

    def _on_bar(self, bar: re.Match) -> list[Event]:
        if self._offset is None:
            self._offset = self._step_offset()
        n, bar_total = int(bar["n"]), int(bar["total"])
        events = []
        if self.total is None:
            self.total = self._offset + bar_total
        if not self._plan_sent:
            events.append(self._plan())
        if rate := _RATE.search(bar["info"]):
            value = float(rate["value"])
            self.sec_per_step = value if rate["unit"] == "s/it" else (1.0 / value if value else None)
        loss = _LOSS.search(bar["info"])
        draw = {"loss": float(loss["loss"]) if loss else None, "sec_per_step": self.sec_per_step, "epoch": self.epoch}
        step = self._offset + n
        unreported = self._unreported
        if unreported is not None and unreported["step"] != step:
            # tqdm skips update()'s draw when the last one is under 0.1 s old (fast steps), but
            # set_postfix always draws: a step drawn once before the next one showed its own loss.
            events.append(self._report())
        elif unreported is not None:
            unreported.update(draw)
            events.append(self._report())  # the set_postfix draw: this step's own loss
        if n > 0 and step != self.step:
            self.step = step
            self._unreported = {"step": step, **draw}
        return events

    def _report(self) -> Event:
        data, self._unreported = self._unreported, None
        self.loss = data["loss"]
        return Step(step=data["step"], total_steps=self.total, loss=data["loss"], sec_per_step=data["sec_per_step"],
                    epoch=data["epoch"])

    def _checkpoint_lora(self, path: str) -> Event:
        data = {"kind": "lora", "path": path, "step": self.step, "epoch": self.epoch, "final": False}
        if match := _EPOCH_FILE.search(path):
            data["epoch"] = int(match.group(1))
        elif match := _STEP_FILE.search(path):
            data["reported_step"] = int(match.group(1))  # sd-scripts' own count; restarts after a resume
        else:
            data["final"] = True
            self.final_lora = path
        event = Checkpoint(**data)
        self.checkpoints.append(event)
        return event

    def _checkpoint_state(self, match: re.Match) -> list[Event]:
        self._pending_state = {
            "kind": "state",
            "path": os.path.dirname(match["file"].strip()),
            "step": self.step,
            "epoch": int(match["epoch"]),
            "reported_step": int(match["step"]),  # what train_state.json holds; may be wrong after a resume
        }
        return []


# tqdm ends a bar drawn below another (the validation bar under the steps bar) by moving the cursor
# back up (ESC[A), with no newline: a log line printed next follows on the same line of the stream.
_BREAK = re.compile(r"\r\n|\n|\r|(?:\x1b\[A)+")


def _first_break(buffer: str) -> tuple[int, int, str] | None:
    """(end of text, start of rest, terminator) for the first \\n, \\r\\n, \\r or cursor-up; None if none yet."""
    match = _BREAK.search(buffer)
    if match is None:
        return None
    if match.group() == "\r" and match.end() == len(buffer):
        return None  # could be the first half of CR LF: wait for the next chunk
    return match.start(), match.end(), "\n" if "\n" in match.group() else "\r"
