"""The bucket sampler: the planner's step count, every sample once per repeat, order from (seed, epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anima_lora_flow.core.buckets import batches_per_epoch, optimizer_steps_per_epoch
from anima_lora_flow.core.train_items import TrainItem, samples_per_bucket
from anima_lora_flow.trainer.data import build_sampler


def _items() -> list[TrainItem]:
    buckets = [(256, 256), (320, 192), (192, 320)]
    return [TrainItem(Path(f"/x/{i}.png"), f"c{i}", buckets[i % 3], repeats=1 + i % 4) for i in range(11)]


@pytest.mark.parametrize("batch_size,accum,epochs", [(1, 1, 3), (2, 1, 2), (3, 2, 2), (4, 5, 1)])
def test_step_count_equals_planner_formula(batch_size, accum, epochs):
    items = _items()
    sampler = build_sampler(items, batch_size, accum, seed=7)
    planned = optimizer_steps_per_epoch(batches_per_epoch(samples_per_bucket(items), batch_size), accum) * epochs
    assert sum(len(sampler.epoch_groups(e)) for e in range(epochs)) == planned == sampler.steps_per_epoch * epochs


def test_each_sample_repeats_and_batches_hold_one_bucket():
    items = _items()
    sampler = build_sampler(items, 2, 2, seed=1)
    seen = [i for group in sampler.epoch_groups(0) for batch in group for i in batch]
    assert sorted(seen) == sorted(i for i, item in enumerate(items) for _ in range(item.repeats))
    for group in sampler.epoch_groups(0):
        for batch in group:
            assert len({items[i].bucket for i in batch}) == 1


def test_order_is_a_function_of_seed_and_epoch():
    items = _items()
    a, b = build_sampler(items, 1, 1, seed=3), build_sampler(items, 1, 1, seed=3)
    assert a.epoch_groups(2) == b.epoch_groups(2)
    assert a.epoch_groups(0) != a.epoch_groups(1)
    assert a.epoch_groups(0) != build_sampler(items, 1, 1, seed=4).epoch_groups(0)
