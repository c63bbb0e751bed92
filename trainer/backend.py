"""What a training backend is: one job description every backend accepts, and the protocol each implements.

A backend trains in its own process, started by the runner with `command`, and reports through the
events of trainer/events.py written to a JSON-lines file. Stop protocol, the same for all: SIGTERM
or the stop file -> save a state, write a Stopped event, exit 3. Exit codes: 0 done, 1 error, 2 bad
input, 3 stopped. The registry (trainer/registry.py) maps a config's `trainer` name to its backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..core.lora_files import epoch_of, lora_file_name
from .events import Event

if TYPE_CHECKING:
    from ..config import TrainingConfig
    from ..core.dataset_report import DatasetReport
    from ..effective import BackendNumbers

EXIT_DONE, EXIT_ERROR, EXIT_USER, EXIT_STOPPED = 0, 1, 2, 3


@dataclass
class TrainJob:
    """Everything one training run needs, JSON-serialisable (the backend's process reads it from a file).

    The first seven fields are every run's; a backend reads the ones it needs of the rest (its
    `prepare` fills what it makes itself, such as a staged dataset).
    """

    config: dict[str, Any]  # TrainingConfig fields
    items: list[dict[str, Any]]  # TrainItem.to_json() records
    models_dir: str | None  # a Diffusers-format Anima folder
    work_dir: str  # local scratch: caches and staged data live here
    output_dir: str  # local disk: LoRAs and state folders land here
    resume_state: str | None = None  # a local state folder to continue from
    dataset_fingerprint: str = ""
    run_id: str = ""
    run_dir: str = ""  # this run's local folder (job file, events, the backend's own config files)
    resume_step: int = 0  # the step the resume state is at, as the run store recorded it
    # Single-file models (DiT, text encoder, VAE), for a backend that loads those.
    dit: str | None = None
    text_encoder: str | None = None
    vae: str | None = None
    # The plan's numbers, for a backend that takes them as settings rather than deriving them.
    precision: str | None = None
    total_steps: int | None = None
    gpu_memory_gib: float | None = None
    # The dataset as a folder of (folder, repeats) subsets, for a backend that scans folders itself.
    dataset_dir: str | None = None
    subsets: list[tuple[str, int]] | None = None
    tool_dir: str | None = None  # an installed checkout of the backend's own program; None: installed on first use
    cache_dir: str | None = None
    # Held-out images for the validation loss (TrainItem records); none: a fixed few training images.
    validation_items: list[dict[str, Any]] = field(default_factory=list)
    validation_source: str = ""  # where they came from: "validation_split" or the validation dataset's source

    # The validation images as (folder, repeats) subsets, for a backend that scans folders itself.
    validation_subsets: list[tuple[str, int]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainJob":
        job = cls(**data)
        if job.subsets is not None:
            job.subsets = [(str(folder), int(repeats)) for folder, repeats in job.subsets]
        if job.validation_subsets is not None:
            job.validation_subsets = [(str(folder), int(repeats)) for folder, repeats in job.validation_subsets]
        return job

    def save(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "TrainJob":
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass
class Outputs:
    """What a run left in its output folder."""

    final_lora: Path | None = None
    epoch_loras: list[Path] = field(default_factory=list)
    states: list[Path] = field(default_factory=list)


@dataclass
class Preview:
    """A dry run's look at what the backend would start: its own config files (local) and the command."""

    files: dict[str, Path]  # what the result calls each file -> the local file
    command: str


class EventParser(Protocol):
    def feed(self, chunk: str) -> list[Event]: ...


@runtime_checkable
class Backend(Protocol):
    """One training backend, as every layer above the trainer sees it."""

    name: str
    # What the planner and the trainer derive the run's numbers with (effective.derive).
    numbers: "BackendNumbers"
    # Trains on several GPUs of one machine (config.num_gpus > 1).
    multi_gpu: bool
    # Settings its own resume restores from the state: a new value would be ignored, so a resume must keep them.
    kept_by_state: frozenset[str]
    # Builds its optimizer in this Python environment (its optional packages must be installed here).
    optimizer_here: bool
    # Where a dry run's result holds the backend's own files (see `preview`); None: it has none.
    preview_key: str | None

    def unsupported(self, config: "TrainingConfig") -> list[str]:
        """Settings this backend does not build, one line each saying what to use instead."""
        ...

    def prepare(self, job: TrainJob, report: "DatasetReport | None") -> TrainJob:
        """Everything before launch in the runner's process (staging, checks); the job the command runs.

        Raises:
            NotBuiltError: a model or input this backend needs is missing from the job.
        """
        ...

    def command(self, job_path: Path, events_path: Path) -> list[str]:
        """The argv of the process the runner starts: it reads the job and appends events."""
        ...

    def parse_events(self, job: TrainJob) -> EventParser:
        """What turns this backend's output into events (its own JSON lines, or its console)."""
        ...

    def resume_step(self, state_dir: Path) -> int:
        """The step a local state folder of this backend continues from (how a job passes it: `resume_state`)."""
        ...

    def outputs(self, output_dir: Path, project_name: str) -> Outputs:
        """The LoRA files and states a run produced in `output_dir`."""
        ...

    def preview(self, job: TrainJob, report: "DatasetReport | None") -> Preview | None:
        """For a dry run: prepare, write the backend's own config files and return them with the command;
        None for a backend without files of its own (nothing is prepared then)."""
        ...


def lora_files(output_dir: Path, project_name: str, states: Sequence[Path]) -> Outputs:
    """The final and epoch LoRAs named by core file naming, beside the given state folders."""
    final = Path(output_dir) / lora_file_name(project_name)
    epochs = sorted(p for p in Path(output_dir).glob("*.safetensors") if epoch_of(project_name, p.name) is not None)
    return Outputs(final if final.is_file() else None, epochs, sorted(states))
