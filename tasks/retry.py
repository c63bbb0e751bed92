"""When a Prefect task may retry: transient failures yes, the user's own mistakes never."""

from __future__ import annotations

from ..errors import NotBuiltError, UserInputError


def retry_unless_user_error(task, task_run, state) -> bool:
    """retry_condition_fn: retry network/storage errors; a bad setting or input fails at once."""
    try:
        state.result()
    except (UserInputError, NotBuiltError, ValueError, TypeError, KeyError):
        return False
    except Exception:  # noqa: BLE001 - anything else (network, storage, a flaky mount) may pass on retry
        return True
    return False
