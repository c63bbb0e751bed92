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
