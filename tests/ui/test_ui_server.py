"""The `anima-lora ui` server: start on a free port, answer /api/health, stop, gone."""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.ui import server as ui_server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_start_health_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://unused.invalid/api")  # restored after the test
    home = tmp_path / "prefect-home"
    home.mkdir()
    # A stale pid file from a dead process is ignored, not fatal.
    (home / ui_server.PID_FILE).write_text(json.dumps({"pid": 2**22 - 7, "port": 1, "log": "x"}))
    port = _free_port()

    server = ui_server.start_ui_server(port, home=home, timeout_s=120)
    try:
        assert server.started and server.port == port
        assert os.environ["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
            assert response.status == 200
        record = json.loads((home / ui_server.PID_FILE).read_text())
        assert record["pid"] == server.pid and record["port"] == port
        # Asking again finds the running one; another port is a clash that names the fix.
        assert ui_server.start_ui_server(port, home=home).started is False
        with pytest.raises(UserInputError, match="--stop"):
            ui_server.start_ui_server(_free_port(), home=home)
    finally:
        stopped = ui_server.stop_ui_server(home)

    assert stopped
    assert not ui_server._alive(server.pid)
    assert not (home / ui_server.PID_FILE).exists()
    assert not ui_server._health_ok("127.0.0.1", port)
    assert ui_server.stop_ui_server(home) is False


def test_port_taken_by_another_program(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UserInputError, match="--port"):
            ui_server.start_ui_server(port, home=tmp_path, timeout_s=5)
    assert not (tmp_path / ui_server.PID_FILE).exists()
