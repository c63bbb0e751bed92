"""Runs sd-scripts in its own process group, streams its output, and turns failure into an exception.

The seed killed only `accelerate launch` on cancel, leaving the real trainer holding the GPU, and
reported success on a non-zero exit; both are fixed here (seed-behaviour §7, §11.1.1-2).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ...config import TrainingConfig
from ...errors import TrainingError, render, setting
from ...core.processes import guard_group, stop_process_group
from ..events import Error, Event, EventSink, Stopped, emit
from .console import ConsoleParser
from .oom import detect_oom, kernel_oom_lines, oom_advice, uptime_seconds

_POLL_S = 0.5  # how often a stop request is checked while the trainer is quiet


@dataclass
class SdScriptsResult:
    """What one sd-scripts run left behind; `tail` goes to the run store's log."""

    exit_code: int
    tail: list[str]
    oom_advice: str | None = None
    stopped: bool = False
    final_lora: str | None = None
    last_step: int = 0
    checkpoints: list[Event] = field(default_factory=list)


class SdScriptsFailed(TrainingError):
    """sd-scripts exited non-zero; the message holds the OOM advice when memory ran out."""

    def __init__(self, message: str, result: SdScriptsResult):
        super().__init__(message)
        self.result = result


def kill_process_group(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the whole group (accelerate's launcher *and* its training child), then SIGKILL."""
    stop_process_group(proc, grace_s=grace_s)


def _reader(stream: Any, out: queue.Queue) -> None:
    """Pushes decoded chunks as they arrive (no line buffering: tqdm never sends newlines)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = stream.fileno()
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        out.put(decoder.decode(data))
    out.put(decoder.decode(b"", final=True))
    out.put(None)


def flushing_print(text: str, end: str = "\n") -> None:
    """The default echo: print and flush, so an in-place redraw shows at once."""
    print(text, end=end, flush=True)


class _Echo:
    """Shows lines as lines and tqdm redraws in place (one updating line, not one line each)."""

    def __init__(self, echo: Callable[..., Any], tail: deque):
        self.echo, self.tail, self.in_bar = echo, tail, False

    def line(self, text: str) -> None:
        self.end_bar()
        self.echo(text)
        self.tail.append(text)

    def bar(self, text: str) -> None:
        self.echo("\r" + text, end="")
        if self.in_bar and self.tail:
            self.tail[-1] = text  # keep only the latest redraw in the log
        else:
            self.tail.append(text)
        self.in_bar = True

    def end_bar(self) -> None:
        if self.in_bar:
            self.echo("")
            self.in_bar = False


def run_sd_scripts(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    sink: EventSink | None = None,
    stop_requested: Callable[[], bool] | None = None,
    echo: Callable[..., Any] = flushing_print,
    log_tail: int = 200,
    parser: ConsoleParser | None = None,
    config: TrainingConfig | None = None,
    gpu_memory_gib: float | None = None,
    grace_s: float = 10,
    cwd: str | None = None,
) -> SdScriptsResult:
    """Run the command to the end, a stop request, or Ctrl-C; stream and parse its output.

    `env` adds variables to this process's environment. `echo` is called as `echo(text)` for a
    line and `echo(text, end="")` for an in-place progress redraw. Pass a `ConsoleParser` made
    with the resume step so steps stay absolute; `config` makes the OOM advice concrete.

    Raises:
        SdScriptsFailed: non-zero exit (with OOM advice when memory ran out).
        KeyboardInterrupt: after the whole process group has been stopped.
    """
    parser = parser or ConsoleParser()
    tail: deque[str] = deque(maxlen=log_tail)
    shown = _Echo(echo, tail)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **(env or {})}
    started_at = uptime_seconds()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd,
        start_new_session=True,  # its own process group, so cancel reaches the training child too
    )
    guard_group(proc)  # its own session outlives this wrapper when it is SIGKILLed: the watchdog ends it then
    chunks: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, chunks), daemon=True).start()
    stopped = False
    try:
        stopped = _pump(chunks, parser, shown, sink, stop_requested)
    except BaseException:  # Ctrl-C or a failing sink: never leave the trainer holding the GPU
        kill_process_group(proc, grace_s)
        shown.end_bar()
        with contextlib.suppress(Exception):  # the sink may be what failed
            emit(sink, Stopped(reason="interrupted", step=parser.step))
        raise
    if stopped:
        kill_process_group(proc, grace_s)
        _drain(chunks, parser, shown, sink, timeout_s=5)
    else:
        for piece in parser.flush():
            _show(piece, shown, sink)
    shown.end_bar()
    exit_code = proc.wait()
    proc.stdout.close()
    result = SdScriptsResult(
        exit_code=exit_code,
        tail=list(tail),
        stopped=stopped,
        final_lora=parser.final_lora,
        last_step=parser.step,
        checkpoints=list(parser.checkpoints),
    )
    if stopped:
        emit(sink, Stopped(reason="stop requested", step=parser.step))
        return result
    if exit_code == 0:
        return result  # the caller says Done once it has found the final LoRA
    return _fail(result, config, gpu_memory_gib, started_at, sink)


def _pump(chunks: queue.Queue, parser: ConsoleParser, shown: _Echo, sink, stop_requested) -> bool:
    """Feed output to the parser until EOF (False) or a stop request (True)."""
    while True:
        try:
            chunk = chunks.get(timeout=_POLL_S)
        except queue.Empty:
            chunk = ""
        if chunk is None:
            return False
        for piece in parser.feed_pieces(chunk):
            _show(piece, shown, sink)
        if stop_requested is not None and stop_requested():
            return True


def _drain(chunks: queue.Queue, parser: ConsoleParser, shown: _Echo, sink, timeout_s: float) -> None:
    """Show what the killed group still wrote; give up if something outside the group holds the pipe."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = chunks.get(timeout=0.1)
        except queue.Empty:
            continue
        if chunk is None:
            break
        for piece in parser.feed_pieces(chunk):
            _show(piece, shown, sink)
    for piece in parser.flush():
        _show(piece, shown, sink)


def _show(piece, shown: _Echo, sink) -> None:
    if piece.echo and piece.progress:
        shown.bar(piece.text.strip())
    elif piece.echo:
        shown.line(piece.text)
    for event in piece.events:
        if sink is not None:
            sink(event)


def _fail(result: SdScriptsResult, config, gpu_memory_gib, started_at, sink) -> NoReturn:
    """Raise SdScriptsFailed with the OOM advice (training output first, then the kernel log)."""
    message = f"sd-scripts failed (exit code {result.exit_code})."
    kernel = [] if detect_oom(result.tail) else kernel_oom_lines(since_uptime=started_at)
    if detect_oom(result.tail) or kernel:
        result.oom_advice = _advice(config, gpu_memory_gib, kernel=bool(kernel))
        message += " " + result.oom_advice
        if kernel:
            message += " Kernel log: " + kernel[-1].strip()
    else:
        last = [line for line in result.tail if line.strip()][-3:]
        message += " Last output: " + " | ".join(s.strip() for s in last)
    emit(sink, Error(message=message, exit_code=result.exit_code, oom=result.oom_advice is not None))
    raise SdScriptsFailed(message, result)


def _advice(config: TrainingConfig | None, gpu_memory_gib: float | None, *, kernel: bool) -> str:
    if config is None:
        what = "the system ran out of RAM" if kernel else "training ran out of GPU memory"
        return render(f"Out of memory: {what}. Lower {setting('network_dim')}, {setting('resolution')} or {setting('batch_size')}.")
    return oom_advice(config, gpu_memory_gib, kernel=kernel)
