"""One picture per sampling point: the base model's row over the LoRA's row, each prompt under its column.

Pillow only (no matplotlib): the grid is made in the trainer process, which must stay light, and by
the sd-scripts backend from the images sd-scripts wrote.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

CELL = 256  # longest side of one image in the grid: a grid of 4 prompts stays under 1100 px wide
PAD = 8
PROMPT_LINES = 3  # a longer prompt is cut with an ellipsis: the full text is in the prompt file
FONT_SIZE = 13
BACKGROUND, INK, MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)


def sample_grid(base: Sequence[Image.Image], lora: Sequence[Image.Image], prompts: Sequence[str], title: str,
                cell: int = CELL) -> Image.Image:
    """The grid: `title` on top, a "base" row (left out when `base` is empty), a "LoRA" row, prompts under the columns.

    Each image is scaled to fit a `cell` x `cell` square (aspect kept, centred), so prompts of different
    sizes line up.

    Raises:
        ValueError: the rows and prompts differ in length, or there is no image.
    """
    if not lora or len(lora) != len(prompts) or (base and len(base) != len(lora)):
        raise ValueError(f"a sample grid needs one image per prompt in each row: {len(base)} base, "
                         f"{len(lora)} LoRA, {len(prompts)} prompts")  # fmt: skip
    font, title_font = _font(FONT_SIZE), _font(FONT_SIZE + 3)
    rows = [("base", base), ("LoRA", lora)] if base else [("LoRA", lora)]
    label_w = max(_text_width(font, name) for name, _ in rows) + 2 * PAD
    line_h = FONT_SIZE + 4
    title_h = FONT_SIZE + 3 + 2 * PAD
    caption_h = PROMPT_LINES * line_h + PAD
    width = label_w + len(lora) * (cell + PAD) + PAD
    height = title_h + len(rows) * (cell + PAD) + caption_h + PAD
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    draw.text((PAD, PAD), title, fill=INK, font=title_font)
    for r, (name, images) in enumerate(rows):
        top = title_h + r * (cell + PAD)
        draw.text((PAD, top + cell // 2 - FONT_SIZE // 2), name, fill=MUTED, font=font)
        for c, image in enumerate(images):
            thumb = ImageOps.contain(image.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
            left = label_w + c * (cell + PAD)
            grid.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
    top = title_h + len(rows) * (cell + PAD)
    for c, prompt in enumerate(prompts):
        left = label_w + c * (cell + PAD)
        for i, line in enumerate(wrap_prompt(prompt, font, cell)):
            draw.text((left, top + i * line_h), line, fill=INK, font=font)
    return grid


def wrap_prompt(prompt: str, font, width: int, lines: int = PROMPT_LINES) -> list[str]:
    """`prompt` in at most `lines` lines no wider than `width` pixels, the last one ending in "…" when cut."""
    text = " ".join(prompt.split())
    # Start from a character count the font surely fits, then narrow until every line does.
    chars = max(4, width // max(1, _text_width(font, "m")) * 2)
    while True:
        wrapped = textwrap.wrap(text, chars, break_long_words=True) or [""]
        if all(_text_width(font, line) <= width for line in wrapped) or chars <= 4:
            break
        chars -= 1
    if len(wrapped) <= lines:
        return wrapped
    last = wrapped[lines - 1]
    while last and _text_width(font, last + "…") > width:
        last = last[:-1]
    return [*wrapped[: lines - 1], last.rstrip() + "…"]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)
