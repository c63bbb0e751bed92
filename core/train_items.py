"""What the trainers consume from the dataset stage: one record per trainable image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .buckets import Bucket


@dataclass(frozen=True)
class TrainItem:
    """A validated image, its caption text, its bucket and how often an epoch repeats it."""

    image_path: Path
    caption: str
    bucket: Bucket
    repeats: int = 1

    def to_json(self) -> dict:
        return {"image_path": str(self.image_path), "caption": self.caption, "bucket": list(self.bucket), "repeats": self.repeats}

    @classmethod
    def from_json(cls, data: dict) -> "TrainItem":
        return cls(Path(data["image_path"]), data["caption"], tuple(data["bucket"]), int(data.get("repeats", 1)))


def samples_per_bucket(items: list[TrainItem]) -> dict[Bucket, int]:
    """Samples (images x repeats) per bucket for one epoch: the input of all step arithmetic."""
    counts: dict[Bucket, int] = {}
    for item in items:
        counts[item.bucket] = counts.get(item.bucket, 0) + item.repeats
    return counts
