"""bench/bench_step.py keeps working: the tiny model on the CPU (CI), the real shapes where a GPU exists."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and the CI box is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_on_cpu_prints_a_table_of_finite_timings(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = bench.main([
        "--model", "tiny", "--device", "cpu", "--resolution", "256", "--batch", "1", "--rank", "4",
        "--grad-checkpointing", "on", "off", "--precision", "fp32", "--steps", "3", "--warmup", "1",
        "--peak-size", "256", "--json", str(out),
    ])  # fmt: skip
    assert len(rows) == 2
    for row in rows:
        assert row.error is None, row.error
        assert math.isfinite(row.ms_step_median) and row.ms_step_median > 0
        assert math.isfinite(row.ms_step_mean) and row.ms_step_mean > 0
        assert row.ms_step_iqr >= 0 and row.ms_image == row.ms_step_median
        assert row.tflop_step > 0 and row.peak_tflops > 0 and 0 < row.mfu
    gc_row, plain_row = rows
    # checkpointing recomputes the forward in the backward: the counter must see more FLOPs
    assert gc_row.tflop_step > plain_row.tflop_step
    table = capsys.readouterr().out
    assert "tiny 256px bs1 r4 gc fp32" in table and "tiny 256px bs1 r4 nogc fp32" in table and "ERROR" not in table
    assert [r["combo"] for r in json.loads(out.read_text())] == [gc_row.combo, plain_row.combo]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path on a machine without CUDA")
def test_a_failing_combination_becomes_an_error_row(bench, capsys):
    rows = bench.main(["--model", "tiny", "--device", "cuda", "--resolution", "256", "--steps", "1", "--warmup", "0"])
    assert len(rows) == 1 and rows[0].error and rows[0].ms_step_median is None
    assert "ERROR" in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_shapes_on_gpu_match_the_reference_flops(bench):
    rows = bench.main(["--model", "real", "--resolution", "512", "--batch", "1", "--grad-checkpointing", "on",
                       "--precision", "bf16", "--steps", "3", "--warmup", "2"])  # fmt: skip
    (row,) = rows
    assert row.error is None, row.error
    # rank 20 instead of §C's rank 16 and the small terms §C leaves out: within 10 %
    assert row.tflop_step == pytest.approx(row.tflop_ref, rel=0.10)
    assert row.peak_mem_gib > 0 and 0 < row.mfu < 1


def test_real_build_path_runs_on_cpu_with_small_widths(bench, monkeypatch):
    """The meta -> to_empty -> random init path of --model real, at tiny widths so that it fits CI."""
    from anima_lora_flow.trainer.tiny import TINY_TRANSFORMER

    monkeypatch.setattr(bench, "REAL_TRANSFORMER", dict(TINY_TRANSFORMER))
    monkeypatch.setattr(bench, "REAL_CONTEXT_TOKENS", 64)
    (row,) = bench.main(["--model", "real", "--device", "cpu", "--resolution", "256", "--rank", "4",
                         "--precision", "fp32", "--steps", "2", "--warmup", "1", "--peak-size", "256"])  # fmt: skip
    assert row.error is None, row.error
    assert row.ms_step_median > 0 and row.tflop_step > 0
    assert row.tflop_ref is None  # §C has no 256 px figure
