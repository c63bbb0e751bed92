"""The dataset report: trainable images, problems, warnings, tags, buckets and a content fingerprint."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ..errors import UserInputError
from .buckets import Bucket
from .train_items import TrainItem, samples_per_bucket

# What happens to the file: problems are "skipped"; warnings say what the trainer will do instead.
Verdict = Literal["skipped", "ignored", "converted", "trained", "note"]

_LIST_LIMIT = 50  # rows per table in the markdown artifact; --json has everything
_GROUP_NAMES = 6  # file names shown per group of like findings in the terminal


class DatasetError(UserInputError):
    """The dataset cannot be trained (missing, unsafe, unreadable or empty); the message says what to do."""

    def __init__(self, message: str, report: "DatasetReport | None" = None, *, field: str | None = None):
        super().__init__(message, field=field)
        self.report = report


class Issue(BaseModel):
    """One finding about one file (or folder); `file` is relative to the dataset root."""

    file: str
    reason: str
    verdict: Verdict
    code: str = ""  # the kind of finding ("no-caption", "duplicate"...), for grouping and for tools


class ImageRecord(BaseModel):
    """A trainable image: where it is, its caption and size, the bucket it trains in and its repeats."""

    path: str
    caption: str
    width: int
    height: int
    bucket: tuple[int, int]
    repeats: int
    sha256: str


class DatasetReport(BaseModel):
    """What the intake found. `images` holds the trainable images only; `problems` were skipped."""

    root: str
    source: str = ""
    resolution: int = 768
    images: list[ImageRecord] = Field(default_factory=list)
    problems: list[Issue] = Field(default_factory=list)
    warnings: list[Issue] = Field(default_factory=list)
    tag_frequency: dict[str, int] = Field(default_factory=dict)
    bucket_histogram: dict[str, int] = Field(default_factory=dict)
    fingerprint: str = ""
    # Trainable images kept out of training for the validation loss (core/validation_split.py), with
    # absolute paths; held_out_source is "validation_split" or the validation dataset's source.
    held_out: list[ImageRecord] = Field(default_factory=list)
    held_out_source: str = ""

    @property
    def trainable_count(self) -> int:
        return len(self.images)

    @property
    def samples_per_epoch(self) -> int:
        return sum(image.repeats for image in self.images)

    def train_items(self) -> list[TrainItem]:
        """The records the trainers consume, with absolute image paths."""
        root = Path(self.root)
        return [TrainItem(root / i.path, i.caption, tuple(i.bucket), i.repeats) for i in self.images]

    def samples_per_bucket(self) -> dict[Bucket, int]:
        return samples_per_bucket(self.train_items())

    def validation_items(self) -> list[TrainItem]:
        """The held-out images as the trainer's records (each once)."""
        return [TrainItem(Path(i.path), i.caption, tuple(i.bucket), 1) for i in self.held_out]

    def to_text(self) -> str:
        """The report for the terminal: totals first, then buckets, problems, warnings and tags."""
        lines = [f"Dataset: {self.root}" + (f"  (from {self.source})" if self.source and self.source != self.root else "")]
        lines.append(f"  {self.summary()}")
        if self.bucket_histogram:
            lines.append(f"Buckets at {self.resolution}px (width x height: images):")
            width = max(self.bucket_histogram.values())
            for key, count in self.bucket_histogram.items():
                bar = "#" * max(1, round(30 * count / width))
                lines.append(f"  {key:>11}  {count:>6}  {bar}")
        for title, issues in (("Problems (these files are not trained)", self.problems), ("Warnings", self.warnings)):
            if issues:
                lines.append(f"{title}: {len(issues)}")
                lines += [line for group in _grouped(issues) for line in _group_lines(group)]
        if self.tag_frequency:
            top = list(self.tag_frequency.items())[:15]
            lines.append("Top tags: " + ", ".join(f"{tag} ({n})" for tag, n in top))
        lines.append(f"Fingerprint: {self.fingerprint[:16]}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as a Prefect markdown artifact."""
        md = [f"# Dataset report\n\n**{self.summary()}**\n", f"- root: `{self.root}`", f"- source: `{self.source}`"]
        md.append(f"- fingerprint: `{self.fingerprint[:16]}`\n")
        if self.bucket_histogram:
            md += [f"## Buckets at {self.resolution}px\n", "| bucket (w x h) | images |", "|---|---|"]
            md += [f"| {key} | {count} |" for key, count in self.bucket_histogram.items()]
        for title, issues in (("Problems (not trained)", self.problems), ("Warnings", self.warnings)):
            if issues:
                md += [f"\n## {title}: {len(issues)}\n", "| file | verdict | reason |", "|---|---|---|"]
                md += [f"| `{i.file}` | {i.verdict} | {i.reason.replace('|', '/')} |" for i in issues[:_LIST_LIMIT]]
                if len(issues) > _LIST_LIMIT:
                    md.append(f"\n... and {len(issues) - _LIST_LIMIT} more.")
        if self.tag_frequency:
            md += ["\n## Top tags\n", "| tag | images |", "|---|---|"]
            md += [f"| {tag.replace('|', '/')} | {n} |" for tag, n in list(self.tag_frequency.items())[:30]]
        return "\n".join(md) + "\n"

    def summary(self) -> str:
        repeats = sorted({i.repeats for i in self.images})
        how = f"x{repeats[0]} repeats" if len(repeats) == 1 else "with per-folder repeats"
        held = f"; {len(self.held_out)} held out for the validation loss" if self.held_out else ""
        return (
            f"{self.trainable_count} images will be trained ({how} = {self.samples_per_epoch} samples per epoch){held}; "
            f"{len(self.problems)} skipped, {len(self.warnings)} warnings"
        )


def _grouped(issues: list[Issue]) -> list[list[Issue]]:
    """Issues of one kind together, kinds in order of first appearance."""
    groups: dict[str, list[Issue]] = {}
    for issue in issues:
        groups.setdefault(issue.code or issue.reason, []).append(issue)
    return list(groups.values())


def _group_lines(group: list[Issue]) -> list[str]:
    """One line for a single finding; a count, an example and a few file names for many."""
    first = group[0]
    if len(group) == 1:
        return [f"  [{first.verdict}] {first.file}: {first.reason}"]
    names = ", ".join(i.file for i in group[:_GROUP_NAMES])
    more = f" and {len(group) - _GROUP_NAMES} more" if len(group) > _GROUP_NAMES else ""
    return [f"  [{first.verdict}] {len(group)} files, e.g. {first.file}: {first.reason}", f"      {names}{more}"]


def fingerprint(images: list[ImageRecord]) -> str:
    """sha256 over the sorted (path, content hash, caption, repeats) of the trainable images."""
    rows = sorted((i.path, i.sha256, i.caption, i.repeats) for i in images)
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def bucket_histogram(images: list[ImageRecord]) -> dict[str, int]:
    """Images per bucket, keyed "WxH", most populated first."""
    counts: dict[str, int] = defaultdict(int)
    for image in images:
        counts[f"{image.bucket[0]}x{image.bucket[1]}"] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
