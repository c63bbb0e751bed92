"""Names of the LoRA files the trainers write and the run store keeps (no torch: the flow imports this)."""

from __future__ import annotations

import re

KOHYA_SUFFIX = ".kohya.safetensors"


def lora_file_name(project: str, epoch: int | None = None) -> str:
    """`<project>.safetensors` for the final LoRA, `<project>-<epoch:06d>.safetensors` per epoch (the seed's names)."""
    return f"{project}.safetensors" if epoch is None else f"{project}-{epoch:06d}.safetensors"


def epoch_of(project: str, name: str) -> int | None:
    """The epoch of a per-epoch LoRA file name of `project`; None for any other name (final, kohya copies)."""
    match = re.fullmatch(re.escape(project) + r"-(\d{6})\.safetensors", name)
    return int(match.group(1)) if match else None


def kohya_name(name: str) -> str:
    """`x-000002.safetensors` -> `x-000002.kohya.safetensors`: the kohya-format copy beside a LoRA file."""
    return name.removesuffix(".safetensors") + KOHYA_SUFFIX
