"""Find a Hugging Face token without ever printing it."""

from __future__ import annotations

import os


def hf_token() -> str | None:
    """HF_TOKEN from the environment, else Colab's or Kaggle's secret store, else None."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    return _colab_secret() or _kaggle_secret()


def _colab_secret() -> str | None:
    try:
        from google.colab import userdata  # type: ignore[import-not-found]  # noqa: PLC0415

        return (userdata.get("HF_TOKEN") or "").strip() or None
    except Exception:  # noqa: BLE001 - not on Colab, secret absent or access not granted: all mean "no token"
        return None


def _kaggle_secret() -> str | None:
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]  # noqa: PLC0415

        return (UserSecretsClient().get_secret("HF_TOKEN") or "").strip() or None
    except Exception:  # noqa: BLE001 - not on Kaggle or no such secret
        return None
