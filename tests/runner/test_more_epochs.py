"""A finished run given more epochs trains on from its last state (real sessions of the demo: a trainer
subprocess, the sync, a local run store)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from anima_lora_flow.dataset.intake import prepare_dataset
from anima_lora_flow.demo import demo_config
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location


def _session(cfg, report, run_id):
    lines, events = [], []
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)
    result = run_training_session(
        cfg, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=Path(cfg.models_dir),
        store=store, work_dir=Path(cfg.work_dir), run_id=run_id, log=lines.append,
        on_event=lambda event, outcome: events.append(event),
    )
    return result, "\n".join(lines), events, store


def test_a_finished_run_given_more_epochs_continues_from_its_state(tmp_path):
    one = demo_config(tmp_path, epochs=1)
    report = prepare_dataset(one.dataset, tmp_path / "intake", resolution=one.resolution, repeats=one.repeats)
    first, _, _, store = _session(one, report, "one")
    assert first.outcome == "completed" and first.steps_done == first.total_steps == 12
    checkpoints = Path(store.path("checkpoints"))
    one_epoch = (checkpoints / "demo.safetensors").read_bytes()
    assert not (checkpoints / "demo-000001.safetensors").exists()  # a run's last epoch writes only the final

    two = one.model_copy(update={"max_train_epochs": 2})
    second, said, events, store = _session(two, report, "two")
    assert second.outcome == "completed" and not second.already_complete
    assert (second.start_step, second.steps_done, second.total_steps) == (12, 24, 24)
    assert "resuming from the state saved at step 12 of 24, after epoch 1 of 2" in said
    assert "--max-train-epochs 1 -> 2: the learning-rate schedule is re-planned from step 12" in said
    # The 1-epoch result is not lost under the new final: it is kept as the epoch-1 file.
    assert "the earlier final LoRA (step 12) is kept as demo-000001.safetensors" in said
    assert (checkpoints / "demo-000001.safetensors").read_bytes() == one_epoch
    assert (checkpoints / "demo.safetensors").read_bytes() != one_epoch
    # The added epoch really trains: a finished cosine schedule ends at LR 0, and the re-planned one
    # must not continue from there.
    trained_on = load_file(checkpoints / "demo.safetensors")
    assert any(not torch.equal(tensor, load_file(checkpoints / "demo-000001.safetensors")[key]) for key, tensor in trained_on.items())
    lrs = [e.lr for e in events if e.event == "step" and e.lr is not None]
    assert lrs and max(lrs) > 0
    plan = next(e for e in events if e.event == "plan")
    assert (plan.start_step, plan.total_steps) == (12, 24)
    assert min(e.step for e in events if e.event == "step") > 12  # nothing of epoch 1 was trained again
    with safe_open(str(Path(store.path("checkpoints", "demo.safetensors"))), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_steps"], meta["ss_epoch"]) == ("24", "2")
    newest = store.list_states()[-1].manifest
    assert newest["step"] == 24 and newest["config"]["max_train_epochs"] == 2 and newest["total_steps"] == 24

    # The same command once more: complete under the new count, nothing trained.
    third, said, events, _ = _session(two, report, "three")
    assert third.already_complete and "step 24 of 24, after epoch 2 of 2" in said and events == []
