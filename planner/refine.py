"""Sharpen the plan during the run: the trainer's measured step rate replaces the table's."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .plan import Plan, refresh_timing


class RateTracker:
    """Seconds per optimizer step over a sliding window, skipping the first steps (warm-up, caching, compile)."""

    def __init__(self, warmup_steps: int = 2, window: int = 50, clock: Callable[[], float] = time.monotonic):
        self.warmup_steps = warmup_steps
        self._points: deque[tuple[int, float]] = deque(maxlen=window + 1)
        self._seen = 0
        self._clock = clock

    def update(self, step: int) -> float | None:
        """Record that `step` (the global optimizer step) just finished; returns the current rate."""
        self._seen += 1
        if self._seen > self.warmup_steps:
            self._points.append((step, self._clock()))
        return self.sec_per_step

    @property
    def sec_per_step(self) -> float | None:
        if len(self._points) < 2:
            return None
        (first_step, first_t), (last_step, last_t) = self._points[0], self._points[-1]
        return None if last_step <= first_step else (last_t - first_t) / (last_step - first_step)


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
