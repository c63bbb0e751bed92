"""Pick the state a re-run continues from: the newest one that verifies and was made with these settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import diff_training_fields
from ..errors import UserInputError
from ..storage.runstore import RunStore, StateInfo, StateVerificationError
from ..ui.progress import epoch_position


class ResumeRefusedError(UserInputError):
    """The newest saved state was trained with other settings or another dataset."""


@dataclass
class ResumePoint:
    state: StateInfo | None = None
    local_dir: Path | None = None
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    epochs: int | None = None  # the run's max_train_epochs, for "epoch E of N"
    total_steps: int | None = None  # of the run the state belongs to; None when the state does not say
    step_in_epoch: int | None = None  # 0 at an epoch's end; None when the state does not say

    @property
    def step(self) -> int:
        return self.state.step if self.state else 0

    @property
    def complete(self) -> bool:
        """The state is the end of training: resuming it would train nothing."""
        return self.state is not None and self.total_steps is not None and self.step >= self.total_steps

    def position(self) -> str:
        """"step 24 of 24, after epoch 2 of 2": the state's place in the run, epochs 1-based."""
        if self.state is None:
            return "step 0"
        of = f" of {self.total_steps}" if self.total_steps else ""
        where = epoch_position(self.state.epoch, self.step_in_epoch, self.state.manifest.get("epochs") or self.epochs)
        return f"step {self.step}{of}" + (f", {where}" if where else "")

    def describe(self) -> str:
        lines = [*self.notes, *(f"skipped: {s}" for s in self.skipped)]
        rest = "".join(f"\n  {line}" for line in lines)
        if self.state is None:
            return "no saved state: starting at step 0" + rest
        if self.complete:
            return f"training is already complete: the state saved at {self.position()} is its last" + rest
        return f"resuming from the state saved at {self.position()}" + rest


def state_extra(training_fields: dict[str, Any], dataset_fingerprint: str) -> dict[str, Any]:
    """What each state's manifest records so a later run can say exactly what changed."""
    return {"config": training_fields, "dataset_fingerprint": dataset_fingerprint}


def find_resume_point(
    store: RunStore,
    *,
    fingerprint: str,
    training_fields: dict[str, Any],
    dataset_fingerprint: str,
    download_to: Path,
    restart: bool = False,
) -> ResumePoint:
    """Newest verified state with this fingerprint, downloaded; refuse when the newest differs."""
    point = ResumePoint(epochs=training_fields.get("max_train_epochs"))
    if restart:
        point.notes += [f"--restart: the earlier {what} moved to {dest} (nothing deleted)"
                        for what, dest in archive_earlier_run(store).items()]
        return point
    for state, reason in store.iter_valid_states():
        if reason:
            point.skipped.append(reason)
            continue
        if state.fingerprint != fingerprint:
            raise ResumeRefusedError(_refusal(store, state, training_fields, dataset_fingerprint))
        local = download_to / f"{state.step:09d}"
        try:
            store.download_state(state, local)
        except (StateVerificationError, OSError) as exc:
            point.skipped.append(f"state at step {state.step}: {exc}")
            continue
        point.state, point.local_dir = state, local
        progress = _native_progress(local)  # states whose manifest predates these fields
        point.total_steps = state.total_steps or progress.get("total_steps") or None
        point.step_in_epoch = state.manifest.get("step_in_epoch", progress.get("step_in_epoch"))
        return point
    return point


def _native_progress(local_dir: Path) -> dict[str, Any]:
    """The native trainer's progress.json of a downloaded state; {} for an sd-scripts or unreadable one
    (then completeness is unknown and the trainer decides)."""
    try:
        progress = json.loads((local_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}


def _refusal(store: RunStore, state: StateInfo, training_fields: dict, dataset_fingerprint: str) -> str:
    changes = diff_training_fields(state.manifest.get("config") or {}, training_fields)
    if state.manifest.get("dataset_fingerprint") not in (None, dataset_fingerprint):
        changes.insert(0, "the dataset's images or captions")
    what = "; ".join(changes[:6]) or "the training settings"
    return (
        f"project '{store.project}' already has a state at step {state.step} trained with different settings "
        f"({what}); run again with --restart to start over, or choose a new --project-name"
    )


def archive_earlier_run(store: RunStore) -> dict[str, str]:
    """Move the earlier run's states and LoRA files aside (never delete a user's progress): {what: where}.

    Both go under one time stamp, so a restarted run writes its own `<project>.safetensors` and epoch
    files without replacing those of the run before it.
    """
    moved = store.archive([rel for rel in ("state", "checkpoints") if store.listdir(rel)])
    return {"states" if rel == "state" else "checkpoints": dest for rel, dest in moved.items()}
