"""`anima-lora doctor` reports storage, GPU, Prefect and secrets, and fails on unusable storage."""

from __future__ import annotations

import json

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


def test_doctor_with_drive_path_off_colab_fails(capsys):
    code = main(["doctor", "--storage", "/content/drive/MyDrive/runs"])
    out = capsys.readouterr().out
    assert code == 1
    assert "not Colab" in out and "pick another --storage" in out


def test_doctor_names_a_second_gpu_and_the_flag_that_uses_it():
    from anima_lora_flow.platforms.detect import detect_platform
    from anima_lora_flow.platforms.doctor import check_gpu
    from anima_lora_flow.platforms.gpu import GpuInfo

    t4x2 = GpuInfo(name="Tesla T4", memory_gib=14.7, capability=(7, 5), arch_list=["sm_75"], count=2)
    finding = check_gpu(detect_platform({"KAGGLE_URL_BASE": "x"}, uptime_s=0, gpu=t4x2))
    assert finding.found.startswith("2x Tesla T4") and "--num-gpus 2" in finding.action
