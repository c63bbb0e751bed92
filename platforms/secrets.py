"""Secrets by name from the environment, Colab's user secrets or Kaggle's secrets; never printed."""

from __future__ import annotations

import os
from collections.abc import Mapping


def secret(name: str, env: Mapping[str, str] = os.environ) -> str | None:
    """`name` from the environment, else Colab's or Kaggle's secret store, else None."""
    value = (env.get(name) or "").strip()
    return value or _colab_secret(name) or _kaggle_secret(name)


def _colab_secret(name: str) -> str | None:
    try:
        from google.colab import userdata  # type: ignore[import-not-found]  # noqa: PLC0415

        return (userdata.get(name) or "").strip() or None
    except Exception:  # noqa: BLE001 - not on Colab, secret absent or access not granted: all mean "none"
        return None


def _kaggle_secret(name: str) -> str | None:
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]  # noqa: PLC0415

        return (UserSecretsClient().get_secret(name) or "").strip() or None
    except Exception:  # noqa: BLE001 - not on Kaggle or no such secret
        return None
