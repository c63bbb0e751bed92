"""The loss curve (and the validation loss, when measured) as a PNG (Pillow only) and as rows for a Prefect table artifact."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (800, 400)
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 70, 20, 34, 40
_BACKGROUND, _AXIS, _GRID, _TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (30, 30, 30)
_RAW, _SMOOTH = (160, 190, 230), (20, 80, 200)
_VALIDATION = (220, 110, 20)  # orange: apart from both blues, and from the grid at a glance


def ema(values: list[float], alpha: float | None = None) -> list[float]:
    """Exponential moving average; the default alpha spans about a twentieth of the run (at least 0.02)."""
    if not values:
        return []
    alpha = alpha if alpha is not None else max(0.02, min(1.0, 20 / len(values)))
    smoothed, current = [], values[0]
    for value in values:
        current = alpha * value + (1 - alpha) * current
        smoothed.append(current)
    return smoothed


def _finite(points) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in points or [] if math.isfinite(float(v))]  # NaN/inf would break the scale


def loss_chart_png(
    losses: list[tuple[int, float]], dest: Path, *, title: str = "", validation: list[tuple[int, float]] | None = None
) -> Path:
    """Draw loss against step (raw in light blue, EMA in dark blue) with axes and min/max labels; write `dest`.

    `validation` is the held-out loss at the steps it was measured, drawn in orange with a marker per
    measurement (there are few of them, so each one shows); both series share the axes.
    """
    points, held_out = _finite(losses), _finite(validation)
    image = Image.new("RGB", SIZE, _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width, height = SIZE
    left, right, top, bottom = _MARGIN_LEFT, width - _MARGIN_RIGHT, _MARGIN_TOP, height - _MARGIN_BOTTOM
    if title:
        draw.text((left, 10), title, fill=_TEXT, font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=_AXIS, width=1)
    if not points and not held_out:
        draw.text((left + 10, (top + bottom) // 2), "no loss values yet", fill=_TEXT, font=font)
        return _save(image, dest)

    both = points + held_out
    steps, values = [p[0] for p in both], [p[1] for p in both]
    s_min, s_max = min(steps), max(steps)
    v_min, v_max = min(values), max(values)
    v_pad = (v_max - v_min) * 0.05 or abs(v_max) * 0.05 or 1.0  # a flat line still needs a visible band

    def xy(step: int, value: float) -> tuple[float, float]:
        x = left + (step - s_min) / ((s_max - s_min) or 1) * (right - left)
        y = bottom - (value - (v_min - v_pad)) / ((v_max - v_min) + 2 * v_pad) * (bottom - top)
        return x, y

    for value, label in ((v_max, f"max {v_max:.4g}"), (v_min, f"min {v_min:.4g}")):
        y = xy(s_min, value)[1]
        draw.line([(left + 1, y), (right, y)], fill=_GRID)
        draw.text((4, y - 6), label, fill=_TEXT, font=font)
    draw.text((left, bottom + 6), str(s_min), fill=_TEXT, font=font)
    draw.text((right - draw.textlength(str(s_max), font=font), bottom + 6), str(s_max), fill=_TEXT, font=font)
    draw.text(((left + right) // 2 - 12, bottom + 20), "step", fill=_TEXT, font=font)
    legend = "loss (light), EMA (dark)"
    legend_x = right - draw.textlength(legend, font=font)
    draw.text((legend_x, 10), legend, fill=_TEXT, font=font)
    if held_out:
        label = "validation"
        x = legend_x - draw.textlength(label, font=font) - 24
        draw.ellipse([x - 9, 13, x - 3, 19], fill=_VALIDATION)
        draw.text((x, 10), label, fill=_VALIDATION, font=font)

    if points:
        raw = [xy(s, v) for s, v in points]
        smooth = [xy(s, v) for s, v in zip([p[0] for p in points], ema([p[1] for p in points]))]
        if len(raw) == 1:
            x, y = raw[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_SMOOTH)
        else:
            draw.line(raw, fill=_RAW, width=1)
            draw.line(smooth, fill=_SMOOTH, width=2)
    if held_out:
        marks = [xy(s, v) for s, v in sorted(held_out)]
        if len(marks) > 1:
            draw.line(marks, fill=_VALIDATION, width=2)
        for x, y in marks:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=_VALIDATION)
    return _save(image, dest)


def loss_table(losses: list[tuple[int, float]], max_rows: int = 200) -> list[dict]:
    """At most `max_rows` rows {step, loss}, evenly spaced over the run, always with the first and the last."""
    if max_rows < 2:
        raise ValueError(f"max_rows must be at least 2 (first and last), got {max_rows}")
    n = len(losses)
    if n <= max_rows:
        picked = range(n)
    else:
        # Evenly spaced indices from 0 to n-1 inclusive; rounding keeps them distinct since n > max_rows.
        picked = sorted({round(i * (n - 1) / (max_rows - 1)) for i in range(max_rows)})
    # Four significant digits, the summary's precision: more is noise between runs, and a small loss
    # (1e-5) keeps its digits where a fixed number of decimals would flatten it to 0.
    return [{"step": int(losses[i][0]), "loss": float(f"{float(losses[i][1]):.4g}")} for i in picked]


def _save(image: Image.Image, dest: Path) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    image.save(dest, format="PNG")
    return dest
