"""Full resumable state: TrainingProgress plus adapter, optimizer, scheduler, scaler and RNG states.

A state folder `state/step_{global_step:08d}/` holds adapter.safetensors (raw peft weights),
training_state.pt (optimizer, scheduler, scaler, RNGs) and progress.json (the progress record, the
training settings and the config fingerprint). The folder is written under a temp name and renamed.
The step lives in progress.json; the folder name only sorts.
"""

from __future__ import annotations

import hashlib
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

from ..config import TrainingConfig, change_note, resume_differences
from ..errors import UserInputError, setting

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
    dataset_fingerprint: str = ""
    base_model: dict[str, Any] = field(default_factory=dict)  # base_model_record() of the model trained on
    # trainer/validation.py's record: its set's identity, the loss at each epoch's end and the best so far.
    validation: dict[str, Any] = field(default_factory=dict)

    def advance(self) -> None:
        self.global_step += 1
        self.step_in_epoch += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0

    def adopt(self, run: "TrainingProgress") -> None:
        """Go on under `run`'s settings and base model: the states saved from here on record this run's,
        so the next resume compares against them (and does not apply a change twice)."""
        self.fingerprint, self.training_fields = run.fingerprint, run.training_fields
        self.dataset_fingerprint, self.base_model = run.dataset_fingerprint, run.base_model

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


def check_resume(
    saved: TrainingProgress,
    cfg: TrainingConfig,
    fingerprint: str,
    *,
    dataset_fingerprint: str | None = None,
    base_model: dict[str, Any] | None = None,
) -> list[str]:
    """The drift rule (config.RESUME_RULES): which changed settings a state may be continued under.

    The runner has judged the state from its manifest before any download; this repeats the judgement
    with what only the trainer knows, the loaded base model, and covers a hand-picked state.

    Returns:
        One warning per changed "continue" setting, naming the step it applies from.

    Raises:
        UserInputError: naming every "match" setting that differs (old -> new), a changed dataset or a
            different base model, and the way out.
    """
    refused, changed = resume_differences(saved.training_fields, cfg.training_fields())
    if saved.dataset_fingerprint and dataset_fingerprint is not None:
        dataset_changed = saved.dataset_fingerprint != dataset_fingerprint
    else:  # a state from before the record, or a caller that does not say: the fingerprint has to tell
        dataset_changed = not refused and saved.fingerprint != fingerprint and not _legacy_fingerprint_matches(
            saved, dataset_fingerprint)
    if dataset_changed:
        refused.append("the dataset's images or captions")
    refused += base_model_mismatch(saved.base_model, base_model or {})
    if refused:
        raise UserInputError(
            f"cannot resume the state at step {saved.global_step}: it was trained with other settings "
            f"({'; '.join(refused)}); restore them, or start over with {setting('restart')} (the old states are archived)"
        )
    return [change_note(key, old, new, saved.global_step) for key, old, new in changed]


def _legacy_fingerprint_matches(saved: TrainingProgress, dataset_fingerprint: str | None) -> bool:
    """States written before the resume rules hashed every recorded setting with the dataset."""
    if saved.dataset_fingerprint or dataset_fingerprint is None:
        return False
    payload = json.dumps({"config": saved.training_fields, "dataset": dataset_fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16] == saved.fingerprint


def base_model_record(cfg: TrainingConfig, transformer: torch.nn.Module) -> dict[str, Any]:
    """The base model a LoRA is trained on: its name, its DiT file's sha256 when known, and the block
    count and width of the transformer as loaded (a 40-block base trains when its files say so)."""
    conf = getattr(transformer, "config", None) or {}
    blocks = conf.get("num_layers") or len(getattr(transformer, "transformer_blocks", ()))
    heads, head_dim = conf.get("num_attention_heads"), conf.get("attention_head_dim")
    sha256 = None
    if not cfg.models_dir:  # a folder of the user's may hold anything: only a pinned download is known
        from ..core.known_models import base_model  # noqa: PLC0415

        sha256 = base_model(cfg.base_model).dit.sha256
    return {
        "name": cfg.models_dir or cfg.base_model,
        "dit_sha256": sha256,
        "blocks": int(blocks),
        "hidden_size": int(heads * head_dim) if heads and head_dim else None,
    }


def base_model_mismatch(saved: dict[str, Any], loaded: dict[str, Any]) -> list[str]:
    """["the base model A (...) -> B (...)"] when the two records cannot be the same model, else []."""
    if not saved or not loaded:  # a state from before the record: the base_model setting was compared
        return []
    shape_differs = any(saved.get(k) != loaded.get(k) for k in ("blocks", "hidden_size"))
    hash_differs = bool(saved.get("dit_sha256") and loaded.get("dit_sha256") and saved["dit_sha256"] != loaded["dit_sha256"])
    if not (shape_differs or hash_differs):
        return []
    return [f"the base model {_describe_base(saved)} -> {_describe_base(loaded)}"]


def _describe_base(record: dict[str, Any]) -> str:
    return f"{record.get('name')} ({record.get('blocks')} blocks, hidden size {record.get('hidden_size')})"


def apply_new_settings(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: TrainingConfig, saved_fields: dict[str, Any]) -> None:
    """After load_state_dict: this run's learning rate, weight decay and betas replace the saved ones.

    Loading an optimizer state brings back its param groups' hyperparameters, and loading a LambdaLR
    its base learning rates: without this, a resume under a new --learning-rate would train on with the
    old one. The rate is scaled by new / old setting (`saved_fields` is the state's record), so the
    schedule keeps its shape and its place, whatever base an earlier resume left it.
    """
    old_lr = saved_fields.get("learning_rate")
    ratio = cfg.learning_rate / old_lr if old_lr else 1.0
    for group in optimizer.param_groups:
        if "weight_decay" in group:
            group["weight_decay"] = cfg.weight_decay
        if "betas" in group:
            group["betas"] = tuple(cfg.betas)
        if ratio != 1.0:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
    if ratio != 1.0 and hasattr(inner, "base_lrs"):
        inner.base_lrs = [base * ratio for base in inner.base_lrs]
        inner._last_lr = [group["lr"] for group in optimizer.param_groups]


def state_dirs(root: Path) -> list[Path]:
    """Complete state folders under root, oldest first."""
    return sorted(p for p in Path(root).glob("step_*") if (p / PROGRESS_FILE).is_file())


def prune_states(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` state folders (after the new one exists, never before)."""
    for old in state_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
