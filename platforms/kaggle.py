"""Kaggle: continue a run from a previous notebook version's output attached under /kaggle/input.

/kaggle/working is kept per version (20 GB) but a new session starts empty; users attach the last
version's output as an input, which is read-only. The run store found there is copied into the new
storage root before resume, so the flow continues instead of starting over.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..storage.runstore import LATEST, RunStore

KAGGLE_INPUT = Path("/kaggle/input")


def on_kaggle(env=os.environ) -> bool:
    return "KAGGLE_KERNEL_RUN_TYPE" in env or "KAGGLE_URL_BASE" in env


def _latest_step(project_dir: Path) -> int:
    try:
        return int((project_dir / "state" / LATEST).read_text().strip())
    except (OSError, ValueError):
        return -1


def find_previous_run_store(project: str, input_root: Path = KAGGLE_INPUT) -> Path | None:
    """The attached run store of `project` with the newest state (searched a few folders deep)."""
    if not input_root.is_dir():
        return None
    candidates = [
        p for depth in ("*", "*/*", "*/*/*", "*/*/*/*") for p in input_root.glob(f"{depth}/{project}")
        if p.is_dir() and ((p / "state").is_dir() or (p / "checkpoints").is_dir())
    ]
    return max(candidates, key=_latest_step, default=None)


def import_previous_run_store(store: RunStore, input_root: Path = KAGGLE_INPUT) -> str | None:
    """Copy an attached earlier run store into `store` when `store` has no state yet; say what was done."""
    if store.list_states():
        return None
    previous = find_previous_run_store(store.project, input_root)
    if previous is None:
        return None
    for path in sorted(p for p in previous.rglob("*") if p.is_file()):
        store.publish_file(path, path.relative_to(previous).as_posix())
    return f"continuing from the run store attached at {previous} (state at step {_latest_step(previous)})"
