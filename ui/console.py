"""The CLI's quiet console: warnings and the lines meant for the user; Prefect's INFO lines stay in the UI.

Prefect's console handler sits on the root logger and its API handler on the run loggers, so a filter
on the console handler hides INFO lines from the terminal while the run's log in the UI keeps them all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

_FLAG = "anima_console"
FOR_CONSOLE = {_FLAG: True}  # `extra=` for an INFO line the quiet console shows too (the plan, the resume point)


def for_console(record: logging.LogRecord) -> bool:
    return bool(getattr(record, _FLAG, False))


def quiet(record: logging.LogRecord) -> bool:
    """The quiet console's filter: warnings and errors, and the INFO lines flagged FOR_CONSOLE."""
    return record.levelno >= logging.WARNING or for_console(record)


class _AsWritten(logging.Formatter):
    """Shows a flagged line as written (the plan is a table, not a timestamped log line); others as before."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage() if for_console(record) else self.inner.format(record)


@contextlib.contextmanager
def quiet_console(*, verbose: bool = False) -> Iterator[None]:
    """Quiet Prefect's console handlers for a CLI command (all of its INFO lines with `verbose`); undone on exit."""
    from prefect.logging.handlers import PrefectConsoleHandler  # noqa: PLC0415 - only once prefect is configured

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    formatters = [h.formatter for h in handlers]
    for handler in handlers:
        if not verbose:
            handler.addFilter(quiet)
            handler.setFormatter(_AsWritten(handler.formatter))
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, formatters):
            handler.removeFilter(quiet)
            handler.setFormatter(formatter)
