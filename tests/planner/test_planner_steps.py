"""Step arithmetic against hand-computed cases, including the seed notebook's own examples."""

import pytest

from anima_lora_flow.core.buckets import batches_per_epoch, optimizer_steps_per_epoch
from anima_lora_flow.planner.steps import count_steps, with_repeats
from anima_lora_flow.planner.suggest import largest_epochs, largest_repeats, max_steps_within

SQUARE = (768, 768)
WIDE = (896, 640)
TALL = (640, 896)


class TestCountSteps:
    def test_seed_formula_at_batch_1(self):
        # The seed: ceil(30 images x 5 repeats / 1) x 10 epochs.
        steps = count_steps({SQUARE: 150}, 1, 1, 10)
        assert (steps.steps_per_epoch, steps.total_steps, steps.batches_per_epoch, steps.samples_per_epoch) == (150, 1500, 150, 150)

    def test_partial_batch_per_bucket(self):
        # 7 + 5 + 1 samples, batch 4: 2 + 2 + 1 = 5 batches (the seed's ceil(13/4) = 4 is wrong).
        steps = count_steps({SQUARE: 7, WIDE: 5, TALL: 1}, 4, 1, 3)
        assert steps.batches_per_epoch == 5
        assert steps.steps_per_epoch == 5
        assert steps.total_steps == 15

    def test_gradient_accumulation_rounds_up(self):
        # 5 batches, accumulate 2: steps after batches 2, 4 and the trailing 5th.
        steps = count_steps({SQUARE: 7, WIDE: 5, TALL: 1}, 4, 2, 2)
        assert (steps.steps_per_epoch, steps.total_steps) == (3, 6)

    def test_matches_the_trainers_functions(self):
        spb = {SQUARE: 33, WIDE: 17, TALL: 2}
        for batch in (1, 2, 3, 8):
            for accum in (1, 2, 4):
                expected = optimizer_steps_per_epoch(batches_per_epoch(spb, batch), accum)
                assert count_steps(spb, batch, accum, 1).steps_per_epoch == expected

    def test_string_bucket_keys_from_json(self):
        assert count_steps({"768x768": 10, "640x896": 3}, 2, 1, 1).batches_per_epoch == 7

    def test_empty_dataset_names_the_fix(self):
        with pytest.raises(ValueError, match="no trainable samples"):
            count_steps({SQUARE: 0}, 1, 1, 1)

    def test_bad_counts(self):
        with pytest.raises(ValueError, match="must be >= 1"):
            count_steps({SQUARE: 1}, 0, 1, 1)


class TestRepeats:
    def test_rescales_plain_folders(self):
        assert with_repeats({SQUARE: 50, WIDE: 25}, 5, 2) == {SQUARE: 20, WIDE: 10}

    def test_per_folder_repeats_cannot_be_solved(self):
        assert with_repeats({SQUARE: 50, WIDE: 3}, 5, 2) is None


class TestSeedSuggestions:
    """30 images, 10 epochs, 1000-step limit: the seed suggests repeats 4 (1200 steps) and halves epochs."""

    spb = {SQUARE: 30 * 5}

    def test_repeats_land_under_the_limit(self):
        best = largest_repeats(self.spb, 5, 1, 1, 10, 1000)
        assert best == 3
        assert count_steps(with_repeats(self.spb, 5, best), 1, 1, 10).total_steps == 900

    def test_epochs_are_solved_not_halved(self):
        # 150 steps per epoch: 6 epochs = 900 <= 1000; the seed would say ceil(10 / 2) = 5.
        assert largest_epochs(self.spb, 1, 1, 10, 1000) == 6

    def test_exactly_at_the_limit_passes(self):
        assert largest_epochs({SQUARE: 100}, 1, 1, 10, 1000) == 10

    def test_buckets_make_repeats_cost_more(self):
        # 3 buckets of 1 image each at batch 2: every repeat count pays a partial batch per bucket.
        spb = {SQUARE: 3, WIDE: 3, TALL: 3}  # 1 image per bucket x 3 repeats
        # repeats 3: 2 batches per bucket = 6 steps/epoch; repeats 2: 1 batch per bucket = 3.
        assert largest_repeats(spb, 3, 2, 1, 10, 59) == 2

    def test_nothing_fits(self):
        assert largest_epochs(self.spb, 1, 1, 10, 100) is None
        assert largest_repeats(self.spb, 5, 1, 1, 10, 100) is None

    def test_max_steps_within(self):
        assert max_steps_within(4 * 3600, 14.4) == 1000
        with pytest.raises(ValueError):
            max_steps_within(10, 0)
