"""The in-run timeout guard: save a full state and stop while there is still time to sync it."""

from __future__ import annotations

import time
from collections.abc import Callable

# Estimated cost of writing a full state (LoRA + optimizer, ~0.5 GB) and syncing it to Drive/a bucket,
# and the slack kept on top for a slow step or a slow mount. The trainer may report real save times.
DEFAULT_SAVE_COST_S = 120.0
DEFAULT_MARGIN_S = 300.0


class SessionGuard:
    """Tells the trainer when to save and stop: when one more step, a save and the margin would pass the deadline."""

    def __init__(
        self,
        deadline_ts: float | None,
        save_cost_s: float = DEFAULT_SAVE_COST_S,
        margin_s: float = DEFAULT_MARGIN_S,
        clock: Callable[[], float] = time.time,
        final_work_s: float = 0.0,
    ):
        self.deadline_ts = deadline_ts
        self.save_cost_s = save_cost_s
        self.margin_s = margin_s
        # A stopped session samples once more before it saves (trainer/sampling.py): the plan's estimate of it.
        self.final_work_s = final_work_s
        self._clock = clock

    def remaining_s(self) -> float | None:
        """Seconds until the session deadline (None: no deadline)."""
        return None if self.deadline_ts is None else self.deadline_ts - self._clock()

    def should_stop(self, sec_per_step: float = 0.0) -> bool:
        """True when now + one step + the last sampling + a save + the margin would pass the deadline."""
        if self.deadline_ts is None:
            return False
        reserve = self.final_work_s + self.save_cost_s + self.margin_s
        return self._clock() + (sec_per_step or 0.0) + reserve > self.deadline_ts

    def record_save(self, seconds: float) -> None:
        """Learn from a real save: the guard never assumes a save is faster than the slowest one seen."""
        self.save_cost_s = max(self.save_cost_s, seconds)


def guard_for(deadline_ts: float | None, clock: Callable[[], float] = time.time, final_work_s: float = 0.0) -> SessionGuard:
    """A guard with the default save cost and margin (a no-op guard when there is no deadline); `final_work_s`:
    the plan's last sampling (Plan.extras.last_sampling_s), done before the stop's save."""
    return SessionGuard(deadline_ts, DEFAULT_SAVE_COST_S, DEFAULT_MARGIN_S, clock, final_work_s)
