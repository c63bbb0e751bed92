"""The loss meter's step rate: what the session guard and the refined plan read."""

import time

import torch

from anima_lora_flow.trainer.loop import LossMeter


def test_time_left_out_at_an_epoch_end_is_not_counted_in_seconds_per_step():
    meter = LossMeter(step=0)
    for _ in range(4):
        meter.add(torch.tensor(0.5))
    time.sleep(0.2)  # validation, saving and sampling at an epoch's end
    meter.leave_out(0.2)
    loss, sec_per_step = meter.read(step=4)
    assert loss == 0.5
    assert sec_per_step < 0.02  # the 0.2 s are not spread over the 4 steps (0.05 s each)
