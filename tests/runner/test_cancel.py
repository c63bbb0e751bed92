"""Cancelling a session (Ctrl-C in the cell, a cancelled flow run) stops the trainer, which saves a
state, and that state still reaches storage before the session gives up."""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.train import run_training_session
from anima_lora_flow.storage import RunStore, resolve_location

# A stand-in trainer with the native trainer's stop protocol: on SIGTERM it saves a state, says so in
# its events and exits 3.
STAND_IN = textwrap.dedent(
    """
    import json, signal, sys, time
    from pathlib import Path
    events, out = Path(sys.argv[1]), Path(sys.argv[2])
    def emit(**e):
        with events.open("a") as fh:
            fh.write(json.dumps(e) + "\\n")
    def on_term(*_):
        state = out / "state" / "step_00000007"
        state.mkdir(parents=True)
        (state / "adapter.safetensors").write_bytes(b"s" * 32)
        emit(event="checkpoint", kind="state", path=str(state), step=7, epoch=0)
        emit(event="stopped", reason="SIGTERM", state=str(state))
        sys.exit(3)
    signal.signal(signal.SIGTERM, on_term)
    emit(event="plan", total_steps=100)
    emit(event="step", step=7, total=100, loss=0.5)
    time.sleep(60)
    """
)


def test_interrupt_stops_the_trainer_and_syncs_its_last_state(tmp_path):
    cfg = TrainingConfig(dataset="d", storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))
    store = RunStore(resolve_location(cfg.storage), cfg.project_name)
    script = tmp_path / "trainer.py"
    script.write_text(STAND_IN)
    run_dir = Path(cfg.work_dir) / "runs" / "r"
    command = [sys.executable, str(script), str(run_dir / "events.jsonl"), str(run_dir / "output")]

    def interrupt_when_training(event, outcome):
        if event.event == "step":
            raise KeyboardInterrupt  # what a Colab "stop cell" raises in the flow process

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_training_session(cfg, items=[], dataset_fingerprint="d", models_dir=None, store=store,
                             work_dir=Path(cfg.work_dir), run_id="r", command=command, log=lambda m: None,
                             on_event=interrupt_when_training)
    assert time.monotonic() - started < 30
    assert [s.step for s in store.list_states()] == [7]
    assert not [t for t in threading.enumerate() if t.name == "checkpoint-sync"]
