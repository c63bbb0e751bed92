"""bench/gpu_check.sh keeps working: its CPU form (tiny model) writes the JSON and markdown and prints graph_breaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check

        return gpu_check
    finally:
        sys.path.remove(str(BENCH))


def test_gpu_table_has_every_combination_once_targets_first():
    gpu_check = _module()
    rows = gpu_check.gpu_rows(768, 20)
    keys = {(c.batch, c.grad_checkpointing, c.precision, c.compile_mode) for c in rows}
    assert len(rows) == len(keys) == 2 * 2 * 2 * 4  # batch 1/4 x GC on/off x bf16/fp16 x four compile modes
    assert (rows[0].batch, rows[0].grad_checkpointing, rows[0].compile_mode) == (1, False, "cuda-graphs")  # the 80 ms target
    assert all(c.resolution == 768 and c.rank == 20 and c.model == "real" for c in rows)


def test_markdown_lists_skipped_and_failed_rows():
    gpu_check = _module()
    result = {
        "device": "H100", "torch": "2", "mode": "gpu", "wall_s": 400.0, "graph_breaks": 0, "resolution": 768,
        "rows": [{"combo": "a", "skipped": "time budget (400 of 420 s spent)"}, {"combo": "b", "error": "OOM | x"}],
        "precision_check": None, "forward_ms": None,
    }  # fmt: skip
    text = gpu_check.markdown(result)
    assert "| a | - | - | - | - | - | skipped: time budget" in text and "error: OOM / x" in text
    assert "graph_breaks: 0" in text


@pytest.mark.slow  # about 80 s of CPU time: minutes on a loaded two-core box
def test_cpu_tiny_form_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU form even on a GPU machine
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "graph_breaks: 0" in done.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["mode"] == "cpu-tiny" and result["graph_breaks"] == 0
    ran = [r for r in result["rows"] if not r.get("skipped")]
    assert ran and all(r.get("error") is None and r["ms_step_median"] > 0 for r in ran)
    assert result["precision_check"]["finite"] and result["forward_ms"] > 0
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown.startswith("# gpu_check: cpu") and "| tiny 256px bs1 r4 gc fp32 |" in markdown


def test_the_one_command_runs_end_to_end_in_its_shortest_cpu_form(tmp_path):
    """What CI keeps working: gpu_check.sh itself, every stage, with a table budget that leaves one row."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--out", str(tmp_path), "--budget-s", "1"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "graph_breaks: 0" in done.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    ran = [r for r in result["rows"] if not r.get("skipped")]
    assert len(ran) == 1 and ran[0]["error"] is None and ran[0]["ms_step_median"] > 0
    assert all("time budget" in r["skipped"] for r in result["rows"] if r.get("skipped"))  # listed, not dropped
    assert result["precision_check"]["finite"] and result["forward_ms"] > 0
    assert "skipped: time budget" in (tmp_path / "gpu_check.md").read_text()
