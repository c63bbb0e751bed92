"""Pick the state a re-run continues from: the newest one that verifies, judged by the resume rules.

The judgement needs only a state's manifest and its small progress.json, so the flow makes it before
the model download, and `train --dry-run` and `plan` make it without downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainingConfig, change_note, resume_differences
from ..core.formatting import epoch_position
from ..core.lora_files import kohya_name
from ..errors import UserInputError, render, setting
from ..storage.runstore import RunStore, StateInfo, StateVerificationError
from ..trainer.registry import backend_for

PROGRESS_FILE = "progress.json"  # the native trainer's progress record (trainer/state.py)


class ResumeRefusedError(UserInputError):
    """The newest saved state was trained with settings a resume must keep, or on another dataset."""


@dataclass
class ResumePoint:
    state: StateInfo | None = None
    local_dir: Path | None = None  # None until downloaded (a judgement alone downloads nothing)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # the "continue" settings that differ, one warning each
    epochs: int | None = None  # this run's max_train_epochs, for "epoch E of N"
    total_steps: int | None = None  # this run's: the state's own, re-planned when the epochs changed; None when unknown
    step_in_epoch: int | None = None  # 0 at an epoch's end; None when the state does not say
    restart: bool = False

    @property
    def step(self) -> int:
        return self.state.step if self.state else 0

    @property
    def complete(self) -> bool:
        """The state is the end of this run's training: resuming it would train nothing."""
        return self.state is not None and self.total_steps is not None and self.step >= self.total_steps

    def position(self) -> str:
        """"step 24 of 24, after epoch 2 of 2": the state's place in this run, epochs 1-based."""
        if self.state is None:
            return "step 0"
        of = f" of {self.total_steps}" if self.total_steps else ""
        where = epoch_position(self.state.epoch, self.step_in_epoch, self.epochs or self.state.manifest.get("epochs"))
        return f"step {self.step}{of}" + (f", {where}" if where else "")

    def describe(self) -> str:
        lines = [*self.changes, *self.notes, *(f"skipped: {s}" for s in self.skipped)]
        rest = "".join(f"\n  {line}" for line in lines)
        if self.state is None:
            return "no saved state: starting at step 0" + rest
        if self.complete:
            return f"training is already complete: the state saved at {self.position()} is its last" + rest
        return f"resuming from the state saved at {self.position()}" + rest

    def would(self, total_steps: int | None = None) -> str:
        """What a run would do, for --dry-run: "would resume from step 12 of 24"."""
        total = self.total_steps or total_steps
        of = f" of {total}" if total else ""
        if self.state is None:
            if self.restart and self.notes:
                return f"would start over at step 0{of} ({'; '.join(self.notes)})"
            return f"would start at step 0{of}"
        if self.complete:
            return f"would train nothing: the state saved at {self.position()} is the end of training"
        return f"would resume from step {self.step}{of}"


def state_extra(training_fields: dict[str, Any], dataset_fingerprint: str) -> dict[str, Any]:
    """What each state's manifest records so a later run can say exactly what changed."""
    return {"config": training_fields, "dataset_fingerprint": dataset_fingerprint}


def judge_resume(store: RunStore, config: TrainingConfig, dataset_fingerprint: str) -> ResumePoint:
    """Where this run would start, from the newest state's manifest and progress record alone: nothing
    is downloaded, archived or written. Run before the model download so a refusal costs nothing.

    Raises:
        ResumeRefusedError: the newest state cannot be continued with this config (the reason names
            each setting, old -> new, or the dataset).
    """
    return find_resume_point(
        store, fingerprint=config.fingerprint(dataset_fingerprint), training_fields=config.training_fields(),
        dataset_fingerprint=dataset_fingerprint, download_to=None, restart=config.restart,
    )


def find_resume_point(
    store: RunStore,
    *,
    fingerprint: str,
    training_fields: dict[str, Any],
    dataset_fingerprint: str,
    download_to: Path | None,
    restart: bool = False,
) -> ResumePoint:
    """Newest verified state that this run may continue, downloaded to `download_to` (None: judged only).

    Raises:
        ResumeRefusedError: the newest verified state cannot be continued (config.RESUME_RULES).
    """
    point = ResumePoint(epochs=training_fields.get("max_train_epochs"), restart=restart)
    if restart:
        earlier = [what for rel, what in (("state", "states"), ("checkpoints", "checkpoints")) if store.listdir(rel)]
        if download_to is None:
            point.notes += [render(f"{setting('restart')} moves the earlier {what} to {store.path('archive')}") for what in earlier]
        else:
            point.notes += [render(f"{setting('restart')}: the earlier {what} moved to {dest} (nothing deleted)")
                            for what, dest in archive_earlier_run(store).items()]
        return point
    for state, reason in store.iter_valid_states():
        if reason:
            point.skipped.append(reason)
            continue
        progress = _stored_progress(store, state)
        changed = _judge(store, state, training_fields, fingerprint, dataset_fingerprint)
        total = _run_total(state, progress, training_fields)
        if total is not None and state.step > total:
            raise ResumeRefusedError(
                f"project '{store.project}' already has a state at step {state.step}, past this run's end at step "
                f"{total} ({setting('max_train_epochs', training_fields.get('max_train_epochs'))}); raise "
                f"{setting('max_train_epochs')} to continue it; run again with {setting('restart')} to start over (the "
                f"earlier states are archived), or choose a new {setting('project_name')}",
                field="max_train_epochs",
            )
        local = None
        if download_to is not None:
            local = download_to / f"{state.step:09d}"
            try:
                store.download_state(state, local)
            except (StateVerificationError, OSError) as exc:
                point.skipped.append(f"state at step {state.step}: {exc}")
                continue
        point.state, point.local_dir, point.total_steps = state, local, total
        point.step_in_epoch = state.manifest.get("step_in_epoch", progress.get("step_in_epoch"))
        point.changes = [change_note(key, old, new, state.step) for key, old, new in changed]
        own_end = state.total_steps or progress.get("total_steps")
        if download_to is not None and own_end == state.step and total is not None and total > state.step:
            point.notes += keep_earlier_final(store, state)
        return point
    return point


def _stored_progress(store: RunStore, state: StateInfo) -> dict[str, Any]:
    """The native trainer's progress.json of a state, read from storage (a few hundred bytes); {} for an
    sd-scripts or unreadable one (then what is unknown stays unknown and the trainer decides)."""
    if PROGRESS_FILE not in (state.manifest.get("files") or {}):
        return {}
    try:
        progress = store.read_json(f"state/{state.step:09d}/{PROGRESS_FILE}")
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}


def _judge(store: RunStore, state: StateInfo, training_fields: dict, fingerprint: str, dataset_fingerprint: str) -> list:
    """The "continue" changes (field, old, new) under which `state` may be resumed, or ResumeRefusedError."""
    recorded = state.manifest.get("config")
    kept = backend_for(training_fields["trainer"]).kept_by_state if "trainer" in training_fields else frozenset()
    refused, changed = resume_differences(recorded or {}, training_fields, kept)
    if state.manifest.get("dataset_fingerprint") not in (None, dataset_fingerprint):
        refused.insert(0, "the dataset's images or captions")
    if recorded is None and state.fingerprint != fingerprint:  # no record of its settings: only the hash can tell
        refused.append("the training settings")
    if refused:
        raise ResumeRefusedError(
            f"project '{store.project}' already has a state at step {state.step} trained with different settings "
            f"({'; '.join(refused[:6])}) that a resume must keep; set them back to continue it; run again with "
            f"{setting('restart')} to start over (the earlier states are archived), or choose a new {setting('project_name')}"
        )
    return changed


def _run_total(state: StateInfo, progress: dict[str, Any], training_fields: dict[str, Any]) -> int | None:
    """This run's total steps: the state's own, re-planned for a changed epoch count. Every setting that
    decides the steps per epoch must match for a resume, so only the epochs can change the total."""
    own = state.total_steps or progress.get("total_steps") or None
    epochs = training_fields.get("max_train_epochs")
    per_epoch = progress.get("steps_per_epoch")
    if not per_epoch and own:
        old_epochs = (state.manifest.get("config") or {}).get("max_train_epochs") or state.manifest.get("epochs")
        per_epoch = own // old_epochs if old_epochs and own % old_epochs == 0 else None
    return per_epoch * epochs if per_epoch and epochs else own


def keep_earlier_final(store: RunStore, state: StateInfo) -> list[str]:
    """A finished run given more epochs would write its new final LoRA over the old one, which no epoch
    file holds (the last epoch saves only the final): keep it under its epoch's name first."""
    final = f"checkpoints/{store.checkpoint_name()}"
    meta = store.lora_metadata(final)
    if not meta or state.epoch is None or meta.get("ss_steps", str(state.step)) != str(state.step):
        return []  # none, or not the LoRA of this state
    epoch_file = f"checkpoints/{store.checkpoint_name(state.epoch)}"
    kept = []
    for rel, dest in ((final, epoch_file), (kohya_name(final), kohya_name(epoch_file))):
        if store.exists(rel) and not store.exists(dest):
            store.write_bytes(dest, store.fs.cat_file(store.path(rel)))  # published whole, as every store write
            kept.append(dest.rsplit("/", 1)[1])
    return [f"the earlier final LoRA (step {state.step}) is kept as {kept[0]}"] if kept else []


def archive_earlier_run(store: RunStore) -> dict[str, str]:
    """Move the earlier run's states and LoRA files aside (never delete a user's progress): {what: where}.

    Both go under one time stamp, so a restarted run writes its own `<project>.safetensors` and epoch
    files without replacing those of the run before it.
    """
    moved = store.archive([rel for rel in ("state", "checkpoints") if store.listdir(rel)])
    return {"states" if rel == "state" else "checkpoints": dest for rel, dest in moved.items()}
