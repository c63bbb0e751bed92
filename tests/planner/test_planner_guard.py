"""The session guard's stop signal, driven by a fake clock."""

from anima_lora_flow.planner.guard import SessionGuard, guard_for


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fires_when_one_more_step_and_a_save_would_pass_the_deadline():
    clock = FakeClock(0.0)
    guard = SessionGuard(deadline_ts=3600.0, save_cost_s=120.0, margin_s=300.0, clock=clock)
    step = 15.0
    # Stop as soon as now + 15 + 120 + 300 > 3600, i.e. now > 3165.
    clock.now = 3165.0
    assert not guard.should_stop(step)
    clock.now = 3165.5
    assert guard.should_stop(step)
    assert guard.remaining_s() == 3600.0 - 3165.5


def test_walking_the_clock_stops_at_the_first_step_past_the_line():
    clock = FakeClock(0.0)
    guard = SessionGuard(deadline_ts=1000.0, save_cost_s=50.0, margin_s=100.0, clock=clock)
    steps = 0
    while not guard.should_stop(10.0):
        clock.now += 10.0
        steps += 1
    # Last allowed start: now + 160 <= 1000 -> now = 840 (84 steps taken), stops at 850.
    assert steps == 85
    assert clock.now == 850.0
    assert clock.now + 50.0 + 100.0 <= 1000.0  # there is still time to save


def test_slower_steps_stop_earlier():
    clock = FakeClock(500.0)
    guard = SessionGuard(1000.0, 100.0, 100.0, clock)
    assert not guard.should_stop(250.0)
    assert guard.should_stop(301.0)


def test_measured_save_raises_the_cost():
    clock = FakeClock(0.0)
    guard = SessionGuard(1000.0, 60.0, 100.0, clock)
    clock.now = 800.0
    assert not guard.should_stop(0.0)
    guard.record_save(150.0)
    assert guard.save_cost_s == 150.0
    assert guard.should_stop(0.0)
    guard.record_save(10.0)
    assert guard.save_cost_s == 150.0


def test_no_deadline_never_stops():
    guard = guard_for(None, clock=FakeClock(1e12))
    assert guard.remaining_s() is None
    assert not guard.should_stop(1e9)


def test_leaves_time_for_the_last_sampling_before_the_save():
    # A session that stops samples once more (trainer/sampling.py) and then saves: the guard keeps both.
    clock = FakeClock(0.0)
    plain = SessionGuard(deadline_ts=3600.0, save_cost_s=120.0, margin_s=300.0, clock=clock)
    sampling = guard_for(3600.0, clock, final_work_s=190.0)
    clock.now = 3600.0 - 15.0 - 120.0 - 300.0 - 190.0  # one step, the sampling, the save and the margin still fit
    assert not sampling.should_stop(15.0)
    clock.now += 1.0
    assert sampling.should_stop(15.0) and not plain.should_stop(15.0)
