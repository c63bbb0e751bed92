"""The sample grid (Pillow only) and the Samples event's line format."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.trainer.events import Event, Samples
from anima_lora_flow.trainer.sample_grid import CELL, _font, sample_grid, wrap_prompt


def _solid(color, size=(64, 64)):
    return Image.new("RGB", size, color)


def _box(grid: Image.Image, color) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels of exactly `color`."""
    found = np.all(np.asarray(grid) == np.array(color, dtype=np.uint8), axis=-1)
    ys, xs = np.nonzero(found)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_grid_puts_base_above_lora_in_prompt_order_each_scaled_to_the_cell():
    base = [_solid((255, 0, 0)), _solid((0, 255, 0), (96, 64))]
    lora = [_solid((0, 0, 255)), _solid((255, 255, 0), (96, 64))]
    grid = sample_grid(base, lora, ["first", "second"], "demo: step 4, epoch 1 of 2")
    red, green, blue, yellow = (_box(grid, c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)))
    assert red[3] < blue[1] and green[3] < yellow[1]  # base row above the LoRA row
    assert red[2] < green[0] and blue[2] < yellow[0]  # first prompt's column on the left
    assert red[2] - red[0] + 1 == CELL and red[3] - red[1] + 1 == CELL
    assert green[2] - green[0] + 1 == CELL and green[3] - green[1] + 1 == round(CELL * 64 / 96)  # aspect kept


def test_grid_without_base_row_has_one_image_row():
    with_base = sample_grid([_solid((1, 1, 1))], [_solid((2, 2, 2))], ["p"], "t")
    lora_only = sample_grid([], [_solid((2, 2, 2))], ["p"], "t")
    assert lora_only.height < with_base.height


def test_grid_refuses_rows_that_do_not_match_the_prompts():
    with pytest.raises(ValueError, match="one image per prompt"):
        sample_grid([_solid((0, 0, 0))], [_solid((0, 0, 0)), _solid((0, 0, 0))], ["a", "b"], "t")
    with pytest.raises(ValueError, match="one image per prompt"):
        sample_grid([], [], [], "t")


def test_long_prompt_is_wrapped_to_the_cell_and_cut_with_an_ellipsis():
    font = _font(13)
    prompt = ", ".join(["masterpiece", "best quality", "1girl", "solo", "long hair"] * 12)
    lines = wrap_prompt(prompt, font, 200, lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getbbox(line)[2] - font.getbbox(line)[0] <= 200 for line in lines)
    assert wrap_prompt("short", font, 200) == ["short"]


def test_samples_event_round_trips_through_a_line():
    event = Samples(path="/o/samples/demo-step00000004.png", step=4, epoch=1, prompts=["a"], base=["/o/b0.png"])
    back = Event.from_line(event.to_line())
    assert isinstance(back, Samples) and back.data == event.data
    failed = Event.from_line(Samples(step=4, error="RuntimeError: out of memory").to_line())
    assert isinstance(failed, Samples) and failed.path is None and failed.error.startswith("RuntimeError")
