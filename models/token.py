"""Find a Hugging Face token without ever printing it."""

from __future__ import annotations

from ..platforms.secrets import secret


def hf_token() -> str | None:
    """HF_TOKEN from the environment, else Colab's or Kaggle's secret store, else None."""
    return secret("HF_TOKEN")
