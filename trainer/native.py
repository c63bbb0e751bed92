"""The native backend (diffusers + peft + accelerate) behind the backend protocol.

Imports no torch: the runner and the planner use it in the flow's process; the training itself runs
in `python -m anima_lora_flow.trainer` (trainer/__main__.py -> trainer/run.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..effective import BackendNumbers
from ..errors import NotBuiltError, setting
from .backend import Outputs, TrainJob, lora_files
from .events import JsonLinesParser

if TYPE_CHECKING:
    from ..config import TrainingConfig
    from ..core.dataset_report import DatasetReport

PROGRESS_FILE = "progress.json"  # a state folder's progress record (trainer/state.py)
# Settings that exist in the config (for the sd-scripts backend or for later) but that this trainer
# does not implement: saying so before the run beats failing after a 5.6 GB download.
_UNBUILT_TIMESTEPS = {"flux_shift", "sigma"}


class NativeBackend:
    name = "native"
    # auto = torch's fused AdamW: exact and the fastest (at rank 20 the fp32 Adam states are ~230 MB, so
    # 8-bit states save little; another Anima trainer measured -26 % step time against AdamW8bit). The
    # scheduler is stepped by the loop once per optimizer step, outside accelerate's prepare.
    numbers = BackendNumbers(name="native", auto_optimizer="adamw", adamw_kernel=True, scheduler_per_process=False,
                             fp16_islands=True, compile_modes=("none", "blocks", "model", "cuda-graphs"))
    multi_gpu = True
    kept_by_state: frozenset[str] = frozenset()  # the loop applies every "continue" setting on resume
    optimizer_here = True
    preview_key = None  # no files of its own: the job is the whole story

    def unsupported(self, config: "TrainingConfig") -> list[str]:
        if config.timestep_sampling in _UNBUILT_TIMESTEPS:
            return [f"{setting('timestep_sampling', config.timestep_sampling)} is not built in the native trainer; "
                    f"use sigmoid, uniform or shift, or {setting('trainer', 'sd-scripts')}"]
        return []

    def prepare(self, job: TrainJob, report: "DatasetReport | None") -> TrainJob:
        if not job.models_dir:
            raise NotBuiltError("the native trainer needs a Diffusers-format model folder (models stage returned none)")
        return job

    def command(self, job_path: Path, events_path: Path) -> list[str]:
        return [
            sys.executable, "-m", "anima_lora_flow.trainer", "--job", str(job_path), "--events", str(events_path),
            "--no-progress",  # the supervisor draws the one progress bar, from events
        ]

    def parse_events(self, job: TrainJob) -> JsonLinesParser:
        return JsonLinesParser()

    def resume_step(self, state_dir: Path) -> int:
        return saved_step(state_dir)

    def outputs(self, output_dir: Path, project_name: str) -> Outputs:
        return lora_files(output_dir, project_name, list((Path(output_dir) / "state").glob("step_*")))

    def preview(self, job: TrainJob, report: "DatasetReport | None") -> None:
        return None


def saved_step(state_dir: str | Path | None) -> int:
    """The step a native state folder resumes at; 0 without one (or when unreadable: the trainer says why)."""
    if not state_dir:
        return 0
    try:
        return int(json.loads((Path(state_dir) / PROGRESS_FILE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
