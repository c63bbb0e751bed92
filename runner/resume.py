"""Pick the state a re-run continues from: the newest one that verifies and was made with these settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import diff_training_fields
from ..errors import UserInputError
from ..storage.runstore import RunStore, StateInfo, StateVerificationError


class ResumeRefusedError(UserInputError):
    """The newest saved state was trained with other settings or another dataset."""


@dataclass
class ResumePoint:
    state: StateInfo | None = None
    local_dir: Path | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.state.step if self.state else 0

    def describe(self) -> str:
        notes = "".join(f"\n  skipped: {s}" for s in self.skipped)
        if self.state is None:
            return "no saved state: starting at step 0" + notes
        return f"resuming from the state saved at step {self.state.step} (epoch {self.state.epoch})" + notes


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
    point = ResumePoint()
    if restart:
        archived = archive_states(store)
        if archived:
            point.skipped.append(f"--restart: earlier states moved to {archived}")
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
        return point
    return point


def _refusal(store: RunStore, state: StateInfo, training_fields: dict, dataset_fingerprint: str) -> str:
    changes = diff_training_fields(state.manifest.get("config") or {}, training_fields)
    if state.manifest.get("dataset_fingerprint") not in (None, dataset_fingerprint):
        changes.insert(0, "the dataset's images or captions")
    what = "; ".join(changes[:6]) or "the training settings"
    return (
        f"project '{store.project}' already has a state at step {state.step} trained with different settings "
        f"({what}); run again with --restart to start over, or choose a new --project-name"
    )


def archive_states(store: RunStore) -> str | None:
    """Move existing states aside (never delete a user's progress) and return where they went."""
    if not store.list_states():
        return None
    dest = store.path("archive", f"state-{time.strftime('%Y%m%d-%H%M%S')}")
    store.fs.makedirs(store.path("archive"), exist_ok=True)
    store.fs.mv(store.path("state"), dest, recursive=True)
    store.fs.invalidate_cache(store.root)
    return dest
