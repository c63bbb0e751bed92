"""The held-out validation images: split off the dataset report before any step is counted.

The planner, effective.py and the trainer all read the report's `images` (or the items made from
them), so holding images out here, once, is what makes the three counts agree.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserInputError, setting
from .dataset_report import DatasetReport, ImageRecord

SPLIT_SOURCE = "validation_split"  # DatasetReport.held_out_source when the images come from the dataset itself


def held_out_rank(seed: int, image: ImageRecord) -> str:
    """The order images are held out in: a function of the seed and the image's content and path only,
    so a resume (or another machine) holds out the same images, whatever order the folder lists them in."""
    return hashlib.sha256(f"{seed}\0{image.sha256}\0{image.path}".encode()).hexdigest()


def held_out_count(fraction: float, images: int) -> int:
    """Images `fraction` holds out: rounded, at least 1 when asked for any, never every image."""
    if fraction <= 0:
        return 0
    return min(images - 1, max(1, round(fraction * images)))


def split_off(report: DatasetReport, fraction: float, seed: int) -> DatasetReport:
    """A copy of `report` whose `images` are the training images and `held_out` the rest.

    Raises:
        UserInputError: a split asked of a dataset with a single trainable image (nothing would train).
    """
    count = held_out_count(fraction, len(report.images))
    if fraction > 0 and count < 1:
        raise UserInputError(
            f"{setting('validation_split', fraction)} needs at least 2 trainable images and the dataset has "
            f"{len(report.images)}; use {setting('validation_split', 0)} or add images",
            field="validation_split",
        )
    if count == 0:
        return report
    chosen = {id(i) for i in sorted(report.images, key=lambda i: held_out_rank(seed, i))[:count]}
    root = report.root
    # Absolute paths: a held-out image from another folder (validation_dataset) reads the same way.
    held = [i.model_copy(update={"path": _absolute(root, i.path), "repeats": 1}) for i in report.images if id(i) in chosen]
    return report.model_copy(update={
        "images": [i for i in report.images if id(i) not in chosen], "held_out": held, "held_out_source": SPLIT_SOURCE,
    })


def with_validation_set(report: DatasetReport, validation: DatasetReport) -> DatasetReport:
    """`report` with every trainable image of the validation dataset's report held out."""
    held = [i.model_copy(update={"path": _absolute(validation.root, i.path), "repeats": 1}) for i in validation.images]
    return report.model_copy(update={"held_out": held, "held_out_source": validation.source or validation.root})


def _absolute(root: str, path: str) -> str:
    return str(Path(root) / path)
