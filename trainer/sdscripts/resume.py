"""sd-scripts' own resume: its state folders, their `train_state.json`, and step numbers that stay absolute."""

from __future__ import annotations

import json
from pathlib import Path

from ...config import TrainingConfig
from .console import ConsoleParser

TRAIN_STATE_FILE = "train_state.json"  # {"current_epoch": e, "current_step": s}, written by sd-scripts
# Our file in sd-scripts' state folder: the validation losses so far, so a resumed run knows its best epoch
# (accelerate's load_state reads only its own files).
VALIDATION_FILE = "anima_validation.json"


def read_train_state(state_dir: str | Path) -> dict:
    """The epoch and step an sd-scripts state folder resumes at.

    Raises:
        FileNotFoundError: the folder is not an sd-scripts state (no train_state.json).
    """
    path = Path(state_dir) / TRAIN_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {state_dir} is not an sd-scripts state folder")
    return json.loads(path.read_text(encoding="utf-8"))


def fix_train_state(state_dir: str | Path, *, step: int, epoch: int | None = None) -> bool:
    """Write the absolute step (from the parser's checkpoint event) into a state's train_state.json.

    After a resume sd-scripts restarts its step counter at the in-epoch remainder and saves that,
    so a second resume would start at the wrong place. Returns True when the file was corrected.
    """
    data = read_train_state(state_dir)
    fixed = {**data, "current_step": step}
    if epoch is not None:
        fixed["current_epoch"] = epoch
    if fixed == data:
        return False
    (Path(state_dir) / TRAIN_STATE_FILE).write_text(json.dumps(fixed), encoding="utf-8")
    return True


def write_validation_history(state_dir: str | Path, history: list[dict]) -> None:
    (Path(state_dir) / VALIDATION_FILE).write_text(json.dumps({"history": history}), encoding="utf-8")


def read_validation_history(state_dir: str | Path) -> list[dict]:
    """The validation losses saved with a state ([] for a state saved without any, or an unreadable file)."""
    try:
        history = json.loads((Path(state_dir) / VALIDATION_FILE).read_text(encoding="utf-8"))["history"]
        return [{"step": int(h["step"]), "epoch": int(h["epoch"]), "loss": float(h["loss"])} for h in history]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def resume_parser(config: TrainingConfig, state_dir: str | Path | None) -> ConsoleParser:
    """A console parser that reports absolute steps for a run resumed from `state_dir` (or a fresh one),
    and knows the validation losses saved with that state."""
    skip = config.gradient_accumulation_steps == 1  # same rule as render_training_toml
    if state_dir is None:
        return ConsoleParser(skip_until_initial_step=skip)
    return ConsoleParser(initial_step=int(read_train_state(state_dir)["current_step"]), skip_until_initial_step=skip,
                         validation_history=read_validation_history(state_dir))
