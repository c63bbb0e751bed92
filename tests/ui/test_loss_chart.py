"""The loss chart PNG and the downsampled loss table."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from anima_lora_flow.ui.loss_chart import SIZE, ema, loss_chart_png, loss_table


def _losses(n: int) -> list[tuple[int, float]]:
    return [(step, 0.3 + 0.2 * math.exp(-step / 50) + 0.02 * math.sin(step)) for step in range(1, n + 1)]


class TestLossChartPng:
    def test_png_has_size_and_is_not_blank(self, tmp_path):
        path = loss_chart_png(_losses(300), tmp_path / "charts" / "loss.png", title="demo loss")
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == SIZE
            colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert len(colors) > 3  # background, axes, text, two lines
        assert sum(count for count, _ in colors if _ != (255, 255, 255)) > 500

    @pytest.mark.parametrize("losses", [[], [(5, 0.4)], [(1, 0.2), (2, 0.2)], [(1, float("nan")), (2, 0.1), (3, 0.2)]])
    def test_edge_cases_still_draw(self, tmp_path, losses):
        with Image.open(loss_chart_png(losses, tmp_path / "loss.png")) as image:
            assert image.size == SIZE


def test_ema_smooths_and_starts_at_first_value():
    assert ema([]) == []
    smoothed = ema([1.0, 0.0, 1.0, 0.0], alpha=0.5)
    assert smoothed[0] == 1.0 and smoothed == [1.0, 0.5, 0.75, 0.375]


class TestLossTable:
    def test_downsampling_keeps_endpoints_and_count(self):
        losses = _losses(1001)
        rows = loss_table(losses, max_rows=200)
        assert len(rows) == 200
        assert rows[0]["step"] == 1 and rows[-1]["step"] == 1001
        steps = [r["step"] for r in rows]
        assert steps == sorted(set(steps))
        assert set(rows[0]) == {"step", "loss"}

    def test_short_runs_are_kept_whole(self):
        assert [r["step"] for r in loss_table(_losses(7), max_rows=200)] == list(range(1, 8))
        assert loss_table([]) == []

    def test_max_rows_below_two_names_the_fix(self):
        with pytest.raises(ValueError, match="max_rows"):
            loss_table(_losses(5), max_rows=1)


class TestValidationSeries:
    def test_validation_loss_is_drawn_in_its_own_colour_with_markers(self, tmp_path):
        from anima_lora_flow.ui.loss_chart import _VALIDATION

        without = loss_chart_png(_losses(300), tmp_path / "a.png")
        with_validation = loss_chart_png(_losses(300), tmp_path / "b.png", validation=[(100, 0.45), (200, 0.42), (300, 0.41)])
        with Image.open(without) as a, Image.open(with_validation) as b:
            assert a.size == b.size == SIZE
            a_counts, b_counts = ({color: n for n, color in im.convert("RGB").getcolors(maxcolors=1_000_000)} for im in (a, b))
        assert _VALIDATION not in a_counts
        assert b_counts[_VALIDATION] > 3 * 40  # three filled markers (and a line between them)

    def test_validation_alone_or_non_finite_still_draws(self, tmp_path):
        with Image.open(loss_chart_png([], tmp_path / "v.png", validation=[(12, 0.5), (24, float("nan"))])) as image:
            assert image.size == SIZE


def test_table_losses_keep_four_significant_digits():
    rows = loss_table([(1, 0.123456789), (2, 2.5e-6), (3, 12.3456)])
    assert [r["loss"] for r in rows] == [0.1235, 2.5e-06, 12.35]
