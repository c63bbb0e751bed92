"""Download errors: one sentence each that says what to do; user-fixable ones are never retried."""

from __future__ import annotations

from ..errors import UserInputError


class ModelDownloadError(Exception):
    """Base of every models-stage failure (catch this to handle both kinds)."""

    retried = False  # True once huggingface_hub's own retries were spent on it: Prefect does not retry it again


class ModelInputError(ModelDownloadError, UserInputError):
    """The user can fix it: wrong name, missing token, no disk space, no internet, a file that stays corrupt."""


class ModelNetworkError(ModelDownloadError, OSError):
    """A flaky network or Hub outage: a download's outlived huggingface_hub's retries; a listing's is left to
    the models task's retries."""
