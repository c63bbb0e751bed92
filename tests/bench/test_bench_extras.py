"""bench/bench_extras.py in its smallest form: a real tiny run whose validation and sampling are timed from outside."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_extras.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_extras", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _positive(part: dict) -> bool:
    return part["wall_s"] > 0 and part["cpu_s"] > 0 and math.isfinite(part["wall_s"])


def test_smallest_run_times_every_part_and_restores_the_trainer(bench, tmp_path, capsys):
    from anima_lora_flow.trainer import loop, run, sampling

    wrapped = [(run, "train"), (loop, "validate"), (loop, "sample_now"), (loop, "save_lora"), (loop, "save_full_state"),
               (sampling, "sample_now"), (sampling, "generate"), (sampling, "build_vae"), (sampling, "sample_grid"),
               (sampling, "release_memory")]  # fmt: skip
    before = [getattr(module, name) for module, name in wrapped]
    out = tmp_path / "extras.json"
    # 4 images (the validation set's minimum), 2 epochs of 4 steps, 2 prompts of 2 steps at 64 px: every part
    # once or twice, in seconds.
    bench.main(["--images", "4", "--repeats", "1", "--epochs", "2", "--rank", "4", "--prompts", "2",
                "--sample-steps", "2", "--sample-size", "64", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    m = result["measured"]

    assert m["steps"] == 8 and _positive(m["training_steps"]) and m["training_steps"]["forwards"] == 8
    # One validation per epoch end: 4 images x 4 noise levels, one forward each.
    assert [r["epoch"] for r in m["validation"]["each"]] == [1, 2]
    assert all(r["forwards"] == 16 and r["wall_s"] > 0 and r["cpu_s"] > 0 for r in m["validation"]["each"])
    # Epoch 1's end and the run's end; the base row once; each row 2 prompts x 2 steps x 2 (guidance).
    assert [r["step"] for r in m["sampling_points"]["each"]] == [4, 8]
    assert all(r["wall_s"] > 0 and r["cpu_s"] > 0 for r in m["sampling_points"]["each"])
    assert m["lora_row"]["count"] == 2 and m["base_row"]["count"] == 1
    assert all(r["forwards"] == 8 and r["wall_s"] > 0 for r in m["lora_row"]["each"] + m["base_row"]["each"])
    assert m["vae_load"]["count"] == 2 and m["vae_decode"]["count"] == 6 and _positive(m["vae_decode"])
    assert all(v > 0 for v in m["s_per_forward"].values())

    for key in ("validation", "sampling", "validation_and_sampling"):
        assert m["share"][key]["wall_s"] > 0
        assert 0 < m["fraction_of_loop"][key]["wall_s"] < 1 and 0 < m["fraction_of_loop"][key]["cpu_s"] < 1
    share = m["share"]["validation_and_sampling"]["wall_s"]
    assert m["fraction_of_loop"]["validation_and_sampling"]["wall_s"] == pytest.approx(share / (1 + share))

    planned = result["planner"]
    # The planner's rule (a forward = a third of a step), applied to this run's measured step.
    assert planned["cpu_scaled"]["s_per_forward"] == pytest.approx(m["training_steps"]["s_per_step"] / 3, rel=1e-3)
    assert planned["cpu_scaled"]["validation_forwards_per_epoch"] == 16
    assert planned["cpu_scaled"]["sampling_forwards_per_point"] == 8
    t4 = planned["gpu_predictions"]["T4 sample_every_n_epochs=0"]
    assert t4["status"].startswith("PREDICTION") and 0 < t4["share_of_training"] <= 0.10

    assert "validation_and_sampling" in capsys.readouterr().out
    # the wrappers are gone: later runs in this process are untimed
    assert [getattr(module, name) for module, name in wrapped] == before
