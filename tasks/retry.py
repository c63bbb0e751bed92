"""When a Prefect task may retry: transient failures yes, the user's own mistakes never."""

from __future__ import annotations

from ..errors import NotBuiltError, UserInputError


def retry_unless_user_error(task, task_run, state) -> bool:
    """retry_condition_fn: retry network/storage errors; a bad setting or input fails at once.

    An error marked `retried` already went through a library's own retries (huggingface_hub's for a
    download): one retry layer per operation, so Prefect does not run those again.
    """
    try:
        state.result()
    except (UserInputError, NotBuiltError, ValueError, TypeError, KeyError):
        return False
    except Exception as exc:  # noqa: BLE001 - anything else (network, storage, a flaky mount) may pass on retry
        return not getattr(exc, "retried", False)
    return False
