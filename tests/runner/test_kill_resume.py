"""Never lose a run: SIGKILL the training session anywhere, run it again, get the same LoRA.

The session (supervisor + trainer subprocess + background sync) runs in a driver process of its own
group; the test kills that whole group at a chosen moment, as a recycled Colab VM would, then runs
the session again and compares the final LoRA with one from a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.demo import demo_config
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.storage.runstore import PART_MARK

DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.core.train_items import TrainItem
    from anima_lora_flow.runner.train import run_training_session
    from anima_lora_flow.storage import RunStore, resolve_location
    spec = json.loads(Path(sys.argv[1]).read_text())
    cfg = TrainingConfig(**spec["config"])
    run_training_session(
        cfg, items=[TrainItem.from_json(i) for i in spec["items"]], dataset_fingerprint=spec["fingerprint"],
        models_dir=Path(cfg.models_dir), store=RunStore(resolve_location(cfg.storage), cfg.project_name),
        work_dir=Path(spec["work_dir"]), run_id=spec["run_id"], log=lambda m: None)
    """
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("killdemo")
    base = demo_config(root)
    report = prepare_dataset(base.dataset, root / "intake", resolution=base.resolution, repeats=base.repeats)
    return root, base, report


def _config(base, storage: Path, work: Path):
    # A state every step, so every kill point has states before and after it.
    return base.model_copy(update={"storage": str(storage), "work_dir": str(work), "save_state_every_minutes": 1e-5,
                                   "max_train_epochs": 2})


def _session(cfg, report, run_id):
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)
    return run_training_session(
        cfg, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=Path(cfg.models_dir),
        store=store, work_dir=Path(cfg.work_dir), run_id=run_id, log=lambda m: None,
    )


def _final_tensors(cfg):
    path = Path(cfg.storage) / cfg.project_name / "checkpoints" / f"{cfg.project_name}.safetensors"
    return load_file(str(path))


@pytest.fixture(scope="module")
def reference(demo):
    root, base, report = demo
    cfg = _config(base, root / "ref-runs", root / "ref-work")
    result = _session(cfg, report, "ref")
    assert result.outcome == "completed"
    return _final_tensors(cfg), result.total_steps


def _kill_when(proc, predicate, timeout=120) -> bool:
    """SIGKILL the whole group once `predicate` holds; False when the session ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if predicate():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    raise AssertionError("kill point never reached")


def _events(work: Path) -> list[dict]:
    events = []
    for path in work.glob("runs/*/events.jsonl"):
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


KILL_POINTS = {
    # mid-training, right after a step was reported
    "during-step": lambda work, store: any(e["event"] == "step" and e["step"] >= 5 for e in _events(work)),
    # while the trainer writes a state folder (its temporary name exists)
    "during-state-save": lambda work, store: any(
        p.name.startswith(".") or p.name.endswith(".tmp") for p in work.glob("runs/*/output/state/*")
    ) and any(e["event"] == "step" and e["step"] >= 3 for e in _events(work)),
    # while the background sync uploads into the store (a temporary upload name exists), before the final
    # LoRA is stored: the run's last grid is uploaded after it, and a kill there leaves nothing to resume
    "during-upload": lambda work, store: any(PART_MARK in p.name for p in store.rglob("*"))
    and any(e["event"] == "step" and e["step"] >= 3 for e in _events(work))
    and not any(store.glob("*/checkpoints/demo.safetensors")),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_then_rerun_gives_the_same_lora(point, demo, reference, tmp_path):
    root, base, report = demo
    ref_tensors, total_steps = reference
    # A state save or an upload lasts milliseconds: on a fast machine a run may finish before the
    # poll sees one, so try a few fresh runs until the kill lands inside the moment it aims at.
    for attempt in range(4):
        cfg = _config(base, tmp_path / f"runs{attempt}", tmp_path / f"work{attempt}")
        if _start_and_kill(cfg, report, point, tmp_path / f"a{attempt}"):
            break
    else:
        pytest.fail(f"the kill point {point} was never reached in 4 runs")
    assert not (Path(cfg.storage) / cfg.project_name / "checkpoints" / "demo.safetensors").exists()

    result = _session(cfg, report, "second")
    assert result.outcome == "completed" and result.steps_done == total_steps
    final = _final_tensors(cfg)
    assert final.keys() == ref_tensors.keys()
    assert all(torch.equal(final[k], ref_tensors[k]) for k in final)


def _start_and_kill(cfg, report, point, tmp_path) -> bool:
    tmp_path.mkdir(parents=True)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"config": cfg.model_dump(mode="json"), "items": [i.to_json() for i in report.train_items()],
                                "fingerprint": report.fingerprint, "work_dir": cfg.work_dir, "run_id": "first"}))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), str(spec)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return _kill_when(proc, lambda: KILL_POINTS[point](Path(cfg.work_dir), Path(cfg.storage)))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_deadline_saves_a_state_that_the_next_session_resumes(demo, reference, tmp_path):
    """The session guard fires mid-run: the trainer saves, stops cleanly, and the next run finishes it."""
    root, base, report = demo
    ref_tensors, total_steps = reference
    cfg = _config(base, tmp_path / "runs", tmp_path / "work").model_copy(update={"save_state_every_minutes": 0})
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)
    deadline = {"near": False}

    def on_event(event, outcome):
        # The trainer has set up (its stop handler is live) when the session's end comes near: the
        # guard's SIGTERM must make it finish the step in hand, save a state and stop.
        if event.event == "plan":
            deadline["near"] = True

    first = run_training_session(
        cfg, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=Path(cfg.models_dir),
        store=store, work_dir=Path(cfg.work_dir), run_id="first", log=lambda m: None,
        should_stop=lambda sec_per_step: deadline["near"], on_event=on_event,
    )
    assert first.outcome == "stopped" and first.stop_reason == "deadline"
    assert first.unsynced_steps == 0
    saved = store.list_states()[-1].step
    assert 1 <= saved < total_steps

    second = _session(cfg, report, "second")
    assert second.outcome == "completed" and second.start_step == saved
    final = _final_tensors(cfg)
    assert all(torch.equal(final[k], ref_tensors[k]) for k in final)
