"""Full resumable state: TrainingProgress plus adapter, optimizer, scheduler, scaler and RNG states.

A state folder `state/step_{global_step:08d}/` holds adapter.safetensors (raw peft weights),
training_state.pt (optimizer, scheduler, scaler, RNGs) and progress.json (the progress record, the
training settings and the config fingerprint). The folder is written under a temp name and renamed.
The step lives in progress.json; the folder name only sorts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from anima_lora_flow.config import TrainingConfig, diff_training_fields
from anima_lora_flow.errors import UserInputError

ADAPTER_FILE = "adapter.safetensors"
TRAINING_STATE_FILE = "training_state.pt"
PROGRESS_FILE = "progress.json"

# Keys of training_state.pt, one constant each so readers and writers agree.
OPTIMIZER_KEY = "optimizer"
SCHEDULER_KEY = "lr_scheduler"
SCALER_KEY = "grad_scaler"  # None unless fp16
RNG_KEY = "rng"  # per process: python / numpy / torch / cuda global states and the training generator


@dataclass
class TrainingProgress:
    """Where a run stands. `step_in_epoch` optimizer steps of `epoch` are done (0-based epoch)."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    seed: int = 0
    sampler_seed: int = 0  # the sampler's order is a pure function of (sampler_seed, epoch)
    fingerprint: str = ""
    training_fields: dict[str, Any] = field(default_factory=dict)
    last_loss: float | None = None

    def advance(self) -> None:
        self.global_step += 1
        self.step_in_epoch += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, data: dict[str, Any]) -> "TrainingProgress":
        try:
            return cls(**data)
        except TypeError as e:
            raise KeyError(f"progress.json does not hold a TrainingProgress record ({e}); is this an anima-lora-flow state?") from e


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generator": generator.get_state(),
    }


def restore_rng(states: list[dict[str, Any]] | dict[str, Any], generator: torch.Generator, process_index: int = 0) -> None:
    """Restore this process's RNGs from the per-process list saved by save_full_state."""
    if isinstance(states, dict):  # a one-process state written before the list existed
        states = [states]
    if process_index >= len(states):
        raise UserInputError(
            f"cannot resume: the state was saved by {len(states)} training process(es), this run has more; "
            "resume with the same num_gpus or start over with restart=True"
        )
    state = states[process_index]
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])


def save_state(
    folder: Path,
    progress: TrainingProgress,
    adapter: dict[str, torch.Tensor],
    training_state: dict[str, Any],
) -> Path:
    """Write a state folder atomically (temp folder, then rename) and return its final path."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(tmp / ADAPTER_FILE))
    torch.save(training_state, tmp / TRAINING_STATE_FILE)
    (tmp / PROGRESS_FILE).write_text(json.dumps(progress.state_dict(), indent=2, sort_keys=True) + "\n")
    if folder.exists():  # re-saving the same step (a stop right after an epoch-end save)
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_state(folder: Path) -> tuple[TrainingProgress, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a state folder written by save_state.

    Raises:
        FileNotFoundError: when the folder or one of its files is missing.
    """
    folder = Path(folder)
    for name in (ADAPTER_FILE, TRAINING_STATE_FILE, PROGRESS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"resume state {folder} is incomplete: {name} is missing")
    progress = TrainingProgress.from_state_dict(json.loads((folder / PROGRESS_FILE).read_text()))
    # weights_only=False: the file holds numpy RNG state and Python tuples, and it is our own output.
    training_state = torch.load(folder / TRAINING_STATE_FILE, map_location="cpu", weights_only=False)
    return progress, load_file(str(folder / ADAPTER_FILE)), training_state


def check_resume(saved: TrainingProgress, cfg: TrainingConfig, fingerprint: str) -> None:
    """The drift rule: a state resumes only under the same training settings and dataset.

    Everything that changes what is trained is in the fingerprint (rank, alpha, lr, epochs, data...);
    placement settings (paths, save cadence) may differ. The flow only offers states with the same
    fingerprint, so a mismatch here means a hand-picked state.

    Raises:
        UserInputError: naming every setting that differs (or the dataset) and the way out.
    """
    if saved.fingerprint == fingerprint:
        return
    changed = diff_training_fields(saved.training_fields, cfg.training_fields()) or ["the dataset content"]
    raise UserInputError(
        f"cannot resume: the state was trained with other settings ({'; '.join(changed)}); "
        "restore those settings or start over with restart=True"
    )


def state_dirs(root: Path) -> list[Path]:
    """Complete state folders under root, oldest first."""
    return sorted(p for p in Path(root).glob("step_*") if (p / PROGRESS_FILE).is_file())


def prune_states(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` state folders (after the new one exists, never before)."""
    for old in state_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
