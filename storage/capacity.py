"""Will the run store fit? Checked before training, against the storage's free space or quota.

Sizes are predictions from the LoRA's parameter count (anima-internals §A4: 1,433,600 x rank for the
DiT's 280 targets), fp32 files and Adam's two moments in each state, kept counts from the config.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..config import TrainingConfig
from ..errors import UserInputError, setting
from .location import Location

LORA_PARAMS_PER_RANK = 1_433_600
BYTES_FP32 = 4
SMALL_FILES = 50 * 2**20  # configs, logs, plan, loss chart
KAGGLE_WORKING = "/kaggle/working"
KAGGLE_WORKING_LIMIT = 20 * 2**30  # "20 Gigabytes of auto-saved disk space (/kaggle/working)"


def predicted_store_bytes(config: TrainingConfig) -> int:
    params = LORA_PARAMS_PER_RANK * config.network_dim
    lora = params * BYTES_FP32
    state = params * BYTES_FP32 * 3  # adapter weights + Adam's exp_avg and exp_avg_sq
    kept_epochs = min(config.save_last_n_epochs or config.max_train_epochs, config.max_train_epochs)
    loras = (kept_epochs if config.save_every_n_epochs else 0) + 1
    return lora * loras + state * config.keep_last_states + SMALL_FILES


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


def free_bytes(location: Location) -> int | None:
    """Space left for the run store; None where it cannot be told cheaply (object stores)."""
    if not location.is_local:
        return None
    root = Path(location.root)
    if root == Path(KAGGLE_WORKING) or Path(KAGGLE_WORKING) in root.parents:
        return KAGGLE_WORKING_LIMIT - _tree_bytes(Path(KAGGLE_WORKING))
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_capacity(location: Location, config: TrainingConfig, existing_bytes: int = 0) -> int:
    """Raise before training when the predicted run store does not fit; returns the bytes needed."""
    needed = max(0, predicted_store_bytes(config) - existing_bytes)
    free = free_bytes(location)
    if free is not None and free < needed:
        raise UserInputError(
            f"storage {location.url} has {free / 2**30:.2f} GiB free but this run needs about {needed / 2**30:.2f} GiB "
            f"(LoRA files and resumable states); free some space, or lower {setting('keep_last_states')}, "
            f"{setting('save_last_n_epochs')} or {setting('network_dim')}",
            field="storage",
        )
    return needed
