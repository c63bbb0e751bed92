"""A dataset host that cannot be reached gives one line and exit 2 at once, for every kind of source."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anima_lora_flow.cli import main
from anima_lora_flow.dataset.fetch import UnreachableError, download_http, is_transient

DRIVE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
FIX = "check the URL and the network"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released), so a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("source", "host", "reason"),
    [
        ("http://example.invalid/ds.zip", "example.invalid", "name not resolved"),
        ("http://127.0.0.1:{port}/ds.zip", "127.0.0.1:{port}", "connection refused"),
        ("ftp://host.invalid/ds.zip", "host.invalid", "name not resolved"),
        ("ftp://127.0.0.1:{port}/ds.zip", "127.0.0.1:{port}", "connection refused"),
    ],
)
def test_unreachable_source_is_one_line_and_exit_2(tmp_path: Path, capsys, source: str, host: str, reason: str):
    port = closed_port()
    started = time.monotonic()
    assert main(["validate", source.format(port=port), "--work-dir", str(tmp_path / "w")]) == 2
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == f"error: cannot reach host '{host.format(port=port)}' ({reason}): {FIX}\n"


def test_refused_http_is_not_retried(tmp_path: Path):
    """Five tries with a 10 s backoff would take minutes: a refusal is answered on the first."""
    started = time.monotonic()
    with pytest.raises(UnreachableError) as caught:
        download_http(f"http://127.0.0.1:{closed_port()}/ds.zip", tmp_path / "ds.zip", attempts=5, backoff=10)
    assert time.monotonic() - started < 5 and not is_transient(caught.value)


def _refusing_proxy(monkeypatch) -> int:
    """Send every https request through a proxy port nothing listens on: Drive is unreachable without a network."""
    port = closed_port()
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return port


@pytest.mark.parametrize("source", [DRIVE_ID, f"https://drive.google.com/drive/folders/{DRIVE_ID}"])
def test_unreachable_drive_names_the_refusing_host_at_once(tmp_path: Path, capsys, monkeypatch, source: str):
    port = _refusing_proxy(monkeypatch)
    started = time.monotonic()
    assert main(["validate", source, "--work-dir", str(tmp_path / "w")]) == 2
    assert time.monotonic() - started < 5  # gdown's own 3 retries are not spent on a refusal
    assert capsys.readouterr().err == f"error: cannot reach host '127.0.0.1:{port}' (connection refused): {FIX}\n"


def test_unreachable_hugging_face_hub(tmp_path: Path):
    """hf:// goes through httpx inside huggingface_hub; run in a child so HF_ENDPOINT is read at import."""
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "anima_lora_flow.cli", "validate", "hf://datasets/someone/some-set", "--work-dir", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: cannot reach host '127.0.0.1:{port}' (connection refused): {FIX}\n"
