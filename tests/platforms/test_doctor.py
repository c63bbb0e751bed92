"""`anima-lora doctor` reports storage, GPU, Prefect and secrets, and fails on unusable storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from anima_lora_flow.cli import main


def test_doctor_with_writable_storage(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    code = main(["doctor", "--storage", str(tmp_path / "store"), "--json"])
    out = capsys.readouterr().out
    findings = {f["topic"]: f for f in json.loads(out)}
    assert code == 0
    assert findings["storage"]["ok"] and "writable" in findings["storage"]["found"]
    assert findings["secrets"]["found"] == "HF_TOKEN"
    assert "hf_secret_value" not in out


def test_doctor_with_drive_path_off_colab_is_bad_input(capsys):
    code = main(["doctor", "--storage", "/content/drive/MyDrive/runs"])
    out = capsys.readouterr().out
    assert code == 2
    assert "not Colab" in out and "pass another --storage" in out


def test_storage_that_is_a_file_gets_trains_own_plain_reason(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    code = main(["doctor", "--storage", str(a_file), "--json"])
    storage = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["storage"]
    assert code == 2 and not storage["ok"]
    assert storage["found"] == f"--storage {a_file} is a file, not a folder; pass a folder or a URL such as gs://bucket/runs"
    assert "Errno" not in storage["found"] and a_file.read_text() == "x"


def test_unreachable_storage_host_is_named(capsys):
    code = main(["doctor", "--storage", "ftp://host.invalid/runs"])
    out = capsys.readouterr().out
    assert code == 2
    assert "!! storage   cannot reach host 'host.invalid' (name not resolved): check the URL and the network" in out


def test_missing_gpu_is_reported_but_is_not_an_error():
    """Doctor describes the machine: with no GPU visible it marks the GPU line and still exits 0."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU from torch, in a child that starts clean
    done = subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", "doctor", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    gpu = {f["topic"]: f for f in json.loads(done.stdout)}["gpu"]
    assert done.returncode == 0, done.stderr
    assert gpu["found"] == "no GPU visible" and not gpu["ok"]


# --- doctor only looks, and checks the Prefect API it would use (issue 17 item 13) ---------------------
def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_doctor_never_creates_the_storage_folder(tmp_path, capsys):
    typo = tmp_path / "typo" / "path"
    code = main(["doctor", "--storage", str(typo), "--json"])
    storage = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["storage"]
    assert code == 0 and storage["ok"] and not (tmp_path / "typo").exists()
    assert storage["found"].startswith(f"{typo}: does not exist; train would create it under {tmp_path}, which is writable")


def test_doctor_reports_a_folder_that_cannot_be_created(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    code = main(["doctor", "--storage", str(a_file / "runs"), "--json"])
    storage = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["storage"]
    assert code == 2 and not storage["ok"] and f"{a_file} is a file, not a folder" in storage["found"]


def test_doctor_says_writable_for_an_existing_folder_and_leaves_nothing_behind(tmp_path, capsys):
    assert main(["doctor", "--storage", str(tmp_path), "--json"]) == 0
    storage = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["storage"]
    assert storage["ok"] and storage["found"].startswith(f"{tmp_path}: writable") and list(tmp_path.iterdir()) == []


def test_an_unreachable_prefect_api_is_reported(capsys, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    main(["doctor", "--json"])
    prefect = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["prefect"]
    assert not prefect["ok"]
    assert prefect["found"] == f"API at http://127.0.0.1:{port}/api: cannot reach host '127.0.0.1:{port}' (connection refused)"


def test_a_prefect_api_that_answers_its_health_check_is_ok(capsys, monkeypatch):
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{server.server_port}/api")
        main(["doctor", "--json"])
        prefect = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["prefect"]
        assert prefect["ok"] and prefect["found"] == f"API at http://127.0.0.1:{server.server_port}/api"
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{server.server_port}")  # /api left out
        main(["doctor", "--json"])
        prefect = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["prefect"]
        assert not prefect["ok"] and "a Prefect API URL ends in /api" in prefect["found"]
    finally:
        server.shutdown()
        server.server_close()


def test_doctor_says_where_the_history_of_a_run_without_an_api_goes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "ph"))
    main(["doctor", "--json"])
    prefect = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["prefect"]
    assert prefect["ok"] and str(tmp_path / "ph") in prefect["found"]
    assert "`anima-lora ui`" in prefect["action"] and str(tmp_path / "ph") in prefect["action"]


def test_doctor_reads_the_api_of_the_active_prefect_profile(tmp_path, capsys, monkeypatch):
    """What `prefect cloud login` or `prefect config set PREFECT_API_URL=...` leaves: doctor names it and its UI."""
    port = _closed_port()
    home = tmp_path / "ph"
    home.mkdir()
    (home / "profiles.toml").write_text(
        f'active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://127.0.0.1:{port}/api"\n')
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    main(["doctor", "--json"])
    prefect = {f["topic"]: f for f in json.loads(capsys.readouterr().out)}["prefect"]
    assert not prefect["ok"] and "profile 'work'" in prefect["found"] and "connection refused" in prefect["found"]
