"""What counts as a training image and a caption: the single list every stage uses."""

from __future__ import annotations

from pathlib import Path

# The extensions the trainers really load (sd-scripts' IMAGE_EXTENSIONS without the optional
# avif/jxl plugins). GIF is deliberately absent: the seed advertised it but sd-scripts never loads it.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_EXTENSION = ".txt"
# Files that archives and desktops leave behind; never part of a dataset.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
JUNK_DIRS = frozenset({"__MACOSX"})


def is_image(path: str | Path) -> bool:
    """True for a file name with a trainable image extension, matched case-insensitively."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_caption(path: str | Path) -> bool:
    return Path(path).suffix.lower() == CAPTION_EXTENSION


def is_junk(path: str | Path) -> bool:
    parts = Path(path).parts
    return bool(parts) and (parts[-1] in JUNK_NAMES or parts[-1].startswith("._") or any(p in JUNK_DIRS for p in parts))
