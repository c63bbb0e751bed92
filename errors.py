"""The project's error types, how a message names a setting, and the exit code each error maps to.

Three types: `UserInputError` (bad input: exit 2, no retry), `NotBuiltError` (an option this version
does not implement: exit 2) and `TrainingError` (training ran and failed: exit 1). A class that adds
data or is caught on its own (a dataset report, a refused resume) subclasses one of them; everything
else raises one of these three, or a builtin whose message names the fix (an OSError where a retry
may help: a dropped connection, a Hub outage). `exit_code` and `error_line` are the one mapping from an
error to what a command prints and returns.

A message never spells a setting the way one front end does: it names it through `setting("learning_rate")`,
and `render` spells it for whoever reads the message. The CLI reads `--learning-rate`, a notebook its
form field (the notebooks' form fields are the config fields: `learning_rate`), the flow its parameter
(`config.learning_rate`). An error's `str()` is rendered for the current audience, which an edge chooses
with `speaking_to` (the CLI) or `speaking_by_default` (the flow, for a deployment's run); a caller that
chose none reads the CLI's spelling (the one README documents), except inside a notebook kernel.
Text that is not an error (a plan's warnings, a resume's notes) is rendered where it is made: `render(f"...")`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import sys
import typing
from collections.abc import Iterator
from typing import Literal

Audience = Literal["cli", "notebook", "flow"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

# The flow's own parameters; every other setting is a field of its `config`.
FLOW_PARAMETERS = frozenset({"config", "dry_run"})

# U+2039/U+203A around the setting's name: readable if a message ever escapes unrendered, and absent from
# paths, URLs and TOML, so rendering cannot touch anything else in a message.
_OPEN, _CLOSE = "\u2039", "\u203a"
_PLACEHOLDER = re.compile(f"{_OPEN}([a-z][a-z0-9_]*)(?:=([^{_CLOSE}]*))?{_CLOSE}")
AUDIENCE_VARIABLE = "ANIMA_LORA_AUDIENCE"  # set for the trainer's subprocess: its messages reach this reader
_AUDIENCE: contextvars.ContextVar[Audience | None] = contextvars.ContextVar("anima_lora_audience", default=None)


def setting(name: str, value: object = None) -> str:
    """A placeholder for the setting `name` (a config field, or a command's own option such as `gpu`),
    with the value it has or should have when one is given: rendered as `--num-gpus 2` or `num_gpus=2`."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"setting names are snake_case config fields, got {name!r}")
    shown = "" if value is None else f"={' '.join(map(str, value)) if isinstance(value, tuple) else value}"
    return f"{_OPEN}{name}{shown}{_CLOSE}"


def spell(name: str, audience: Audience | None = None, value: str | None = None) -> str:
    """How `audience` (default: the current one) writes the setting `name`, with `value` when given."""
    audience = audience or current_audience()
    if audience == "cli":
        flag = "--" + name.replace("_", "-")
        if value in ("True", "False"):  # argparse.BooleanOptionalAction: --x / --no-x
            return flag if value == "True" else "--no-" + flag[2:]
        return flag if value is None else f"{flag} {value}"
    # The notebooks' form fields carry the config fields' names; the flow's parameter is `config`.
    spelled = f"config.{name}" if audience == "flow" and name not in FLOW_PARAMETERS else name
    return spelled if value is None else f"{spelled}={value}"


def render(message: str | BaseException, audience: Audience | None = None) -> str:
    """The text of `message` (or of an error) with every setting spelled for `audience` (default: the current one)."""
    if isinstance(message, _NamesSettings):
        text = message.template
    else:
        text = message if isinstance(message, str) else str(message)
    return _PLACEHOLDER.sub(lambda m: spell(m.group(1), audience, m.group(2)), text)


def current_audience() -> Audience:
    """The audience an edge chose with `speaking_to`; else the one a parent process passed down
    (`audience_env`); else a notebook inside a kernel; else the CLI."""
    chosen = _AUDIENCE.get()
    if chosen:
        return chosen
    inherited = os.environ.get(AUDIENCE_VARIABLE)
    if inherited in typing.get_args(Audience):
        return inherited  # type: ignore[return-value]
    return "notebook" if in_notebook_kernel() else "cli"


def in_notebook_kernel() -> bool:
    """True when this code runs inside a Jupyter/Colab/Kaggle kernel's shell.

    Asked of IPython's running shell, not of `sys.modules`: a process that merely imported ipykernel
    (nbclient driving a notebook, a test session) is still a terminal program.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


def audience_env() -> dict[str, str]:
    """The environment entry that makes a child process (the trainer) speak to this process's reader."""
    return {AUDIENCE_VARIABLE: current_audience()}


def audience_chosen() -> bool:
    return _AUDIENCE.get() is not None


@contextlib.contextmanager
def speaking_to(audience: Audience) -> Iterator[None]:
    """Render every message inside the block for `audience`."""
    token = _AUDIENCE.set(audience)
    try:
        yield
    finally:
        _AUDIENCE.reset(token)


@contextlib.contextmanager
def speaking_by_default(audience: Audience) -> Iterator[None]:
    """Render for `audience` inside the block unless an edge chose already (the CLI) or a notebook kernel runs it."""
    if audience_chosen() or current_audience() == "notebook":
        yield
        return
    with speaking_to(audience):
        yield


class _NamesSettings:
    """Mixed into the error types: `str()` renders the message's settings for the current audience."""

    def __init__(self, message: str = "", *args: object, field: str | None = None):
        super().__init__(message, *args)
        self.field = field  # the config field the error is about, when there is one

    @property
    def template(self) -> str:
        """The message with its placeholders, for passing to another process that renders it."""
        return self.args[0] if self.args and isinstance(self.args[0], str) else ""

    def __str__(self) -> str:
        return render(self.template) if self.template else super().__str__()


class UserInputError(_NamesSettings, ValueError):
    """Bad input from the user (a setting, a path, a dataset): one-line reason, exit code 2, no retry."""


class NotBuiltError(_NamesSettings, RuntimeError):
    """A stage or option that this version does not implement yet; the message says which."""


class TrainingError(_NamesSettings, RuntimeError):
    """Training started and failed (diverged, crashed, ran out of memory); exit code 1, the message names the fix."""


def exit_code(exc: BaseException) -> int:
    """The process exit code for an error that ended a command: 2 bad input, 130 interrupted, else 1."""
    if isinstance(exc, (UserInputError, NotBuiltError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def is_user_error(exc: BaseException) -> bool:
    """The user's mistake (exit 2): retrying cannot help and a traceback would only bury the reason."""
    return exit_code(exc) == EXIT_BAD_INPUT


def one_line(exc: BaseException, audience: Audience | None = None) -> str:
    """The error's message on one line, its settings spelled for `audience`."""
    text = render(exc, audience).strip()
    return " ".join((text or type(exc).__name__).split())


def error_line(exc: BaseException, audience: Audience | None = None) -> str:
    """The one line a command prints when `exc` ends it (its exit code is `exit_code(exc)`)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted: the trainer was stopped; run the same command again to resume"
    if isinstance(exc, UserInputError):
        return f"error: {one_line(exc, audience)}"
    if isinstance(exc, NotBuiltError):
        return f"error: not built yet: {one_line(exc, audience)}"
    return f"error: {type(exc).__name__}: {one_line(exc, audience)}"
