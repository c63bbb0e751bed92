"""Fixtures for the models stage: a fake Hub on localhost and huggingface_hub pointed at it, online."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests import hub_server without a package

from fake_anima import diffusers_repo, single_file_repo  # noqa: E402
from hub_server import FakeHub  # noqa: E402

from anima_lora_flow.core import known_models  # noqa: E402


@pytest.fixture
def hub_online(monkeypatch, tmp_path):
    """huggingface_hub online (tests/conftest.py sets HF_HUB_OFFLINE=1), no real token, fast retries."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    monkeypatch.setenv("ANIMA_LORA_CACHE", str(tmp_path / "anima-cache"))
    monkeypatch.setattr("time.sleep", lambda s: None)  # huggingface_hub's own backoff


@pytest.fixture
def fake_hub(hub_online, monkeypatch, tmp_path):
    """The two Anima repos, tiny, served locally; the registry pins follow the fake files."""
    repos = {known_models.DIFFUSERS_REPO: diffusers_repo(), known_models.SINGLE_FILE_REPO: single_file_repo()}
    single = repos[known_models.SINGLE_FILE_REPO]
    pin = lambda known: replace(known, sha256=single.etag(known.filename), size=len(single.files[known.filename]))  # noqa: E731
    monkeypatch.setattr(known_models, "TEXT_ENCODER", pin(known_models.TEXT_ENCODER))
    monkeypatch.setattr(known_models, "VAE", pin(known_models.VAE))
    base = known_models.BASE_MODELS["anima-base-v1.0"]
    monkeypatch.setitem(known_models.BASE_MODELS, "anima-base-v1.0", replace(base, dit=pin(base.dit)))
    with FakeHub(repos, token="hf_secret_test_token") as hub:
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
