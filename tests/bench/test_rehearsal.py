"""The full-size rehearsal's code path at a reduced size (same layouts, 28 blocks, tiny widths): about 5 min.

Run it with `python -m pytest -m slow tests/bench/test_rehearsal.py`; plain `pytest` deselects it (pyproject addopts).
The real size is `python bench/rehearse.py --json rehearsal.json` (bench/NOTES.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REHEARSE = Path(__file__).resolve().parents[2] / "bench" / "rehearse.py"


@pytest.mark.slow
def test_reduced_rehearsal_passes_every_check(tmp_path: Path):
    report_path = tmp_path / "rehearsal.json"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("HF_HUB_OFFLINE", "ANIMA_SD_SCRIPTS_DIR")}
    out = subprocess.run(
        [sys.executable, str(REHEARSE), "--scale", "reduced", "--work", str(tmp_path / "work"), "--skip-sd-scripts",
         "--json", str(report_path)],
        capture_output=True, text=True, env=env, timeout=1500,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == str(report_path), out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(report_path.read_text())
    failed = [name for name, ok in report["checks"].items() if ok is not True]
    assert out.returncode == 0 and not failed, failed
    assert report["lora"]["native"]["modules"] == 280 and report["lora"]["kohya_copy"]["modules"] == 280
    assert report["generate"]["tokenizers"]["sizes"] == {"tokenizer": 151_669, "t5_tokenizer": 32_100}
    native = report["stages"]["train native"]
    assert {"cache", "load", "first step", "save"} <= set(native["stages"])
    assert [m["class"] for m in native["resident_during_training"]] == ["CosmosTransformer3DModel"]
    assert report["stages"]["download + convert"]["stages"]["convert"]["peak_bytes"] > 0
    assert set(report["gpu_host"]["stages"]) == {"cache fp32 (T4)", "load fp16 (T4)", "load bf16"}
    assert "GPU host: load fp16 (T4)" in report["host_stages"]
