"""Sharpen the plan during the run: the trainer's measured step rate replaces the table's."""

from __future__ import annotations

from .plan import Plan, refresh_timing


def refine(plan: Plan, observed_sec_per_step: float, steps_done: int, now: float | None = None) -> Plan:
    """A copy of `plan` timed with the measured rate from `steps_done` on (decision follows the new fit)."""
    timing = refresh_timing(plan, observed_sec_per_step, steps_done, now)
    decision = "ok" if timing["fits"] is not False else plan.overrun_action
    return plan.model_copy(update={
        **timing,
        "sec_per_step": round(observed_sec_per_step, 3),
        "rate_status": "measured",
        "rate_source": f"measured this run over the steps before step {steps_done}",
        "steps_done": steps_done,
        "decision": decision,
    })
