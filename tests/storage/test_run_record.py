"""runs.jsonl says how far a failed run got and why; `status` shows it; a refused run leaves no config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.resume import ResumeRefusedError
from anima_lora_flow.runner.train import TrainingFailedError, run_training_session
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.status import status_text
from anima_lora_flow.tasks.storage import mount_storage_task, record_run_task


def _config(tmp_path, **overrides) -> TrainingConfig:
    return TrainingConfig(dataset="d", storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"), **overrides)


def _store(cfg) -> RunStore:
    return RunStore(resolve_location(cfg.storage), cfg.project_name)


def _session(cfg, run_id, script):
    return run_training_session(
        cfg, items=[], dataset_fingerprint="d", models_dir=None, store=_store(cfg), work_dir=Path(cfg.work_dir),
        run_id=run_id, command=[sys.executable, "-c", script], log=lambda m: None,
    )


def _flow_record(run_id):
    """What flows/train_lora.py records when train_task raised: its placeholder result."""
    return {"run_id": run_id, "started": 0, "ended": 1, "outcome": "failed", "steps_done": 0, "total_steps": None,
            "trainer": "native"}


def test_a_failed_trainer_is_recorded_with_its_step_and_reason(tmp_path):
    cfg = _config(tmp_path)
    events = tmp_path / "work" / "runs" / "r1" / "events.jsonl"
    lines = ['{"event": "plan", "total_steps": 240}', '{"event": "step", "step": 30, "total": 240}']
    script = (f"import sys; open({str(events)!r}, 'a').write({chr(10).join(lines)!r} + '\\n'); "
              "raise RuntimeError('CUDA out of memory')")
    with pytest.raises(TrainingFailedError) as caught:
        _session(cfg, "r1", script)
    record_run_task.fn(cfg, _flow_record("r1"), error=caught.value)

    run = _store(cfg).runs()[-1]
    assert (run["outcome"], run["steps_done"], run["total_steps"]) == ("failed", 30, 240)
    assert run["error"].startswith("training failed at step 30: RuntimeError: CUDA out of memory")
    text = status_text(_store(cfg))
    assert "failed  steps 30/240  r1" in text and "reason: training failed at step 30" in text


def test_a_run_refused_before_training_shows_dashes_and_its_reason(tmp_path):
    store = _store(_config(tmp_path))
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"w")
    store.publish_state(folder, 12, epoch=1, fingerprint="another run's settings")
    cfg = _config(tmp_path, learning_rate=3e-4)
    with pytest.raises(ResumeRefusedError) as caught:
        _session(cfg, "r2", "pass")
    record_run_task.fn(cfg, _flow_record("r2"), error=caught.value)

    run = store.runs()[-1]
    assert run["steps_done"] is None and run["total_steps"] is None
    assert run["error"] == " ".join(str(caught.value).split())
    text = status_text(store)
    assert "failed  steps -/-  r2" in text and "steps 0/None" not in text
    assert "reason: project 'my_lora' already has a state at step 12 trained with different settings" in text
    # The session had started: its config sits beside its line in runs.jsonl.
    assert json.loads((Path(cfg.storage) / "my_lora" / "configs" / "r2" / "config.json").read_text())["learning_rate"] == 3e-4


def test_an_interrupted_run_is_not_called_failed(tmp_path):
    cfg = _config(tmp_path)
    record_run_task.fn(cfg, _flow_record("r3"), error=KeyboardInterrupt())
    run = _store(cfg).runs()[-1]
    assert (run["outcome"], run["error"], run["steps_done"]) == ("interrupted", "interrupted (Ctrl-C)", None)
    record_run_task.fn(cfg, {**_flow_record("r4"), "outcome": "completed", "steps_done": 24, "total_steps": 24})
    assert "error" not in _store(cfg).runs()[-1]


def test_mounting_storage_writes_no_config(tmp_path):
    """The config is the session's to write: a run refused for its dataset right after the mount leaves none
    (nor an empty project folder: the folder is made by the run's first write)."""
    cfg = _config(tmp_path)
    root = mount_storage_task.fn(cfg, "refused-run").open().root
    assert not Path(root).exists()
    text = status_text(_store(cfg))
    assert "runs: none recorded" in text and "nothing here yet" in text


def test_the_flow_pattern_records_the_error_under_prefect(prefect_harness, tmp_path):
    """The exact shape the flow uses: `record_run_task(..., error=sys.exc_info()[1])` in the `finally` of a
    failing task, with a real Prefect engine between them; and None when the task succeeded."""
    from prefect import flow, task

    from anima_lora_flow.runner.train import SessionResult

    cfg = _config(tmp_path)

    @task
    def train(fail: bool) -> dict:
        if fail:
            raise TrainingFailedError("training failed at step 7: boom", SessionResult("r", "failed", 7, 50, 0))
        return {"outcome": "completed", "steps_done": 50, "total_steps": 50}

    @flow
    def run(fail: bool) -> dict:
        result = {"outcome": "failed", "steps_done": 0}
        try:
            result = train(fail)
        finally:
            record_run_task(cfg, {"run_id": f"fail={fail}", "outcome": result.get("outcome"),
                                  "steps_done": result.get("steps_done"), "total_steps": result.get("total_steps")},
                            error=sys.exc_info()[1])
        return result

    with pytest.raises(TrainingFailedError):
        run(True)
    run(False)
    failed, done = _store(cfg).runs()[-2:]
    assert (failed["steps_done"], failed["total_steps"], failed["error"]) == (7, 50, "training failed at step 7: boom")
    assert done["outcome"] == "completed" and "error" not in done
