"""EXIF orientation: the one rule by which the validator's buckets and the trainer's pixels see an image upright.

A phone photo is often stored sideways with an Orientation tag saying how to turn it. Both the
bucket assignment (dataset/validate.py) and the image loader (trainer/cache.py) go through these
functions, so an image is bucketed in the shape it is trained in.
"""

from __future__ import annotations

from PIL import ExifTags, Image, ImageOps

# Orientations 5 to 8 turn the image a quarter: width and height trade places.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation (1 to 8) as ImageOps.exif_transpose reads it; 1 when absent, unreadable or invalid."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001  (a damaged EXIF block must not make an otherwise good image fail)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as it is displayed and trained, read from the header without decoding."""
    return (img.height, img.width) if exif_orientation(img) in _QUARTER_TURNS else (img.width, img.height)


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation says (a loaded copy); the image itself when there is nothing to turn."""
    if exif_orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)
