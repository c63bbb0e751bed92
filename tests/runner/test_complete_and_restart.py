"""A finished run is not trained or rewritten again; --restart keeps the earlier run's LoRAs; epochs read 1-based.

Real sessions of the demo (a trainer subprocess, the sync, a local run store), one after another on
one store, in the order a user would meet them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.demo import demo_config
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location
from anima_lora_flow.ui.progress import ConsoleProgress


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("completedemo")
    cfg = demo_config(root)
    report = prepare_dataset(cfg.dataset, root / "intake", resolution=cfg.resolution, repeats=cfg.repeats)
    return cfg, report


def _session(cfg, report, run_id, also=None, **kwargs):
    lines, events = [], []
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)

    def on_event(event, outcome):
        events.append(event)
        if also is not None:
            also(event, outcome)

    result = run_training_session(
        cfg, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=Path(cfg.models_dir),
        store=store, work_dir=Path(cfg.work_dir), run_id=run_id, log=lines.append, on_event=on_event, **kwargs,
    )
    return result, "\n".join(lines), events, store


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_finished_run_is_reported_not_retrained(demo, tmp_path):
    cfg, report = demo
    project = Path(cfg.storage) / cfg.project_name
    final = project / "checkpoints" / "demo.safetensors"

    first, _, _, store = _session(cfg, report, "first")
    assert first.outcome == "completed" and first.steps_done == 24
    manifest = store.list_states()[-1].manifest
    assert (manifest["total_steps"], manifest["step_in_epoch"], manifest["epochs"], manifest["epoch"]) == (24, 0, 2, 2)
    assert json.loads((project / "configs" / "first" / "config.json").read_text())["project_name"] == "demo"
    original = tmp_path / "original.safetensors"
    shutil.copy2(final, original)
    stamp = final.stat().st_mtime_ns

    # Again: the state is the last step and its LoRA is in storage. No trainer starts, nothing is written.
    second, said, events, _ = _session(cfg, report, "second")
    assert second.outcome == "completed" and second.already_complete
    assert (second.steps_done, second.total_steps, second.start_step) == (24, 24, 24)
    assert "training is already complete: the state saved at step 24 of 24, after epoch 2 of 2 is its last" in said
    assert "Nothing to train" in said and "epoch 3" not in said
    assert events == [] and not (Path(cfg.work_dir) / "runs" / "second").exists()
    assert final.stat().st_mtime_ns == stamp and _sha(final) == _sha(original)

    # The final LoRA is gone from storage: written again from the state, without a training step.
    final.unlink()
    third, said, events, _ = _session(cfg, report, "third")
    assert "final LoRA is missing from storage: writing it again" in said
    assert third.outcome == "completed" and not third.already_complete and third.steps_done == 24
    assert not [e for e in events if e.event == "step"]
    assert _same_tensors(final, original)

    # Another run's LoRA in its place (here the epoch-1 file): kept in the archive, not overwritten.
    foreign = project / "checkpoints" / "demo-000001.safetensors"
    shutil.copy2(foreign, final)
    fourth, said, _, store = _session(cfg, report, "fourth")
    moved = re.search(r"moved it to (\S+);", said)
    assert moved, said
    assert _sha(Path(moved.group(1))) == _sha(foreign) and moved.group(1).startswith(store.path("archive"))
    assert _same_tensors(final, original)


def test_restart_keeps_the_earlier_loras_and_resume_names_the_epoch(demo, tmp_path):
    cfg, report = demo
    project = Path(cfg.storage) / cfg.project_name
    final = project / "checkpoints" / "demo.safetensors"
    if not final.exists():  # run alone
        _session(cfg, report, "first")
    earlier = {p.name: _sha(p) for p in (project / "checkpoints").iterdir()}
    stop = {"now": False}

    def on_plan(event, outcome):
        stop["now"] = stop["now"] or event.event == "plan"

    # --restart, stopped after its first step: the earlier states and LoRAs are moved aside, whole.
    restarted, said, _, store = _session(cfg.model_copy(update={"restart": True}), report, "restarted",
                                         also=on_plan, should_stop=lambda sec: stop["now"])
    assert restarted.outcome == "stopped" and restarted.steps_done < 12
    dests = dict(re.findall(r"--restart: the earlier (states|checkpoints) moved to (\S+) \(nothing deleted\)", said))
    assert set(dests) == {"states", "checkpoints"}, said
    kept = Path(dests["checkpoints"])
    assert {p.name: _sha(p) for p in kept.iterdir()} == earlier
    assert list((Path(dests["states"])).glob("*/manifest.json"))
    assert not final.exists()  # the restarted run has not written its own yet
    step = restarted.steps_done

    # Resumed mid-epoch 1: the runner, the trainer and the bar agree on the step and the epoch.
    out = io.StringIO()
    bar = ConsoleProgress(file=out, echo_checkpoints=False)
    lines, events = [], []
    result = run_training_session(
        cfg, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=Path(cfg.models_dir),
        store=store, work_dir=Path(cfg.work_dir), run_id="resumed", log=lines.append,
        on_event=lambda event, outcome: (events.append(event), bar(event, outcome)),
    )
    assert result.outcome == "completed" and result.start_step == step
    said = "\n".join(lines)
    assert f"resuming from the state saved at step {step} of 24, in epoch 1 of 2" in said
    trainer_says = [e.message for e in events if e.event == "log" and "resumed from" in e.message]
    assert trainer_says and trainer_says[0].endswith(f"at step {step} of 24 (in epoch 1 of 2)")
    plan = next(e for e in events if e.event == "plan")
    assert plan.start_step == step
    first_draw = out.getvalue().split("\r")[1] if "\r" in out.getvalue() else out.getvalue()
    assert f"{step}/24" in first_draw, out.getvalue()[:300]
    assert {p.name: _sha(p) for p in kept.iterdir()} == earlier  # the archive is untouched by the new run


def test_the_summary_says_nothing_was_trained():
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.ui.summary import summary_markdown, summary_text

    cfg = TrainingConfig(dataset="d", project_name="p")
    result = {"outcome": "completed", "steps_done": 24, "total_steps": 24, "start_step": 24, "already_complete": True,
              "final_lora": "/runs/p/checkpoints/p.safetensors"}
    assert summary_text(cfg, result).startswith("p: already complete, nothing trained, 24/24 steps")
    assert "nothing was trained" in summary_markdown(cfg, result, "/runs")
    assert "0 of - (started" in summary_markdown(cfg, {"outcome": "failed", "steps_done": 0, "total_steps": None}, "/runs")
