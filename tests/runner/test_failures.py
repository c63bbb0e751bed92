"""A failed trainer is a failed session with a sentence that says what happened and what to do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.train import TrainingFailedError, run_training_session
from anima_lora_flow.storage import RunStore, resolve_location


def _session(tmp_path, script: str):
    cfg = TrainingConfig(dataset="d", storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))
    return run_training_session(
        cfg, items=[], dataset_fingerprint="d", models_dir=None,
        store=RunStore(resolve_location(cfg.storage), cfg.project_name), work_dir=Path(cfg.work_dir), run_id="r",
        command=[sys.executable, "-c", script], log=lambda m: None,
    )


def test_lost_gpu_is_named_with_resume_instructions(tmp_path):
    script = "import sys; print('RuntimeError: CUDA error: unspecified launch failure'); sys.exit(1)"
    with pytest.raises(TrainingFailedError, match=r"GPU was lost .* run the same command again"):
        _session(tmp_path, script)


def test_other_failures_carry_the_last_line_and_the_log(tmp_path):
    with pytest.raises(TrainingFailedError, match=r"ValueError: broken batch .*full log: .*trainer.log"):
        _session(tmp_path, "raise ValueError('broken batch')")
    assert (tmp_path / "runs" / "my_lora" / "logs" / "r.log").exists()


def test_a_diverged_run_says_start_over_not_resume(tmp_path):
    # A trainer's "diverged" error already says what to do; "run it again to resume" would loop on the same NaN.
    events = tmp_path / "work" / "runs" / "r" / "events.jsonl"
    line = '{"event": "error", "kind": "diverged", "message": "training diverged at step 30: Start over with --restart"}'
    script = f"import sys; open({str(events)!r}, 'a').write({line!r} + '\\n'); sys.exit(1)"
    with pytest.raises(TrainingFailedError) as caught:
        _session(tmp_path, script)
    assert str(caught.value).startswith("training diverged at step 30: Start over with --restart (full log: ")
    assert "resume" not in str(caught.value)
