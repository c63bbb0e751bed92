"""The supervisor's reading of events: steps, checkpoints, the final LoRA."""

from __future__ import annotations

from anima_lora_flow.runner.supervise import Outcome, _apply
from anima_lora_flow.trainer.events import Done, Plan


def test_done_after_a_resume_at_the_last_step_reports_all_steps():
    # A session resumed from the final state sees no step events, only "done".
    outcome = Outcome()
    _apply(Plan(total_steps=24), outcome, None)
    _apply(Done(lora="/o/demo.safetensors", step=24), outcome, None)
    assert outcome.completed and outcome.step == 24 == outcome.total_steps
