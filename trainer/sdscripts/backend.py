"""The sd-scripts backend (kohya's anima_train_network.py) behind the backend protocol.

The runner starts `python -m anima_lora_flow.trainer.sdscripts` (this package's __main__), which
installs sd-scripts if needed, writes its two TOML files, launches it and turns its console into the
project's events (console.py).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ...config import TrainingConfig, cache_root
from ...effective import BackendNumbers
from ...errors import NotBuiltError
from ..backend import Outputs, Preview, TrainJob, lora_files
from .console import ConsoleParser
from .resume import TRAIN_STATE_FILE, read_train_state, resume_parser

if TYPE_CHECKING:
    from ...core.dataset_report import DatasetReport


class SdScriptsBackend:
    name = "sd-scripts"
    # auto = the seed notebook's AdamW8bit, whose bitsandbytes comes with sd-scripts' own requirements.txt.
    numbers = BackendNumbers(name="sd-scripts", auto_optimizer="adamw8bit", adamw_kernel=False, scheduler_per_process=True,
                             fp16_islands=False)
    multi_gpu = False
    # accelerate's load_state brings back the optimizer's hyperparameters, the scheduler's base learning
    # rate and the grad scaler from its state: a new value would be ignored there.
    kept_by_state = frozenset({"learning_rate", "weight_decay", "betas", "mixed_precision"})
    optimizer_here = False  # it runs in its own virtual environment, from its own requirements
    preview_key = "sd_scripts"

    def unsupported(self, config: TrainingConfig) -> list[str]:
        return []

    def prepare(self, job: TrainJob, report: "DatasetReport | None") -> TrainJob:
        """Stage the validated dataset (kohya scans folders itself: it must see only what the validator accepted),
        and the validation images, which sd-scripts reads as a dataset of their own (staging.stage_validation)."""
        if report is not None and job.dataset_dir is None:
            from .staging import stage_dataset, stage_validation  # noqa: PLC0415 - Pillow, only when a report is staged

            staged = stage_dataset(report, Path(job.work_dir))
            held = stage_validation(report, Path(job.work_dir), TrainingConfig(**job.config).seed)
            job = replace(job, dataset_dir=str(staged.root), subsets=staged.subsets,
                          validation_subsets=held.subsets if held else None)
        missing = [k for k in ("dataset_dir", "dit", "text_encoder", "vae") if not getattr(job, k)]
        if missing:
            raise NotBuiltError(f"the sd-scripts backend needs the single-file models; missing: {', '.join(missing)}")
        return job

    def command(self, job_path: Path, events_path: Path) -> list[str]:
        return [sys.executable, "-m", "anima_lora_flow.trainer.sdscripts", "--job", str(job_path),
                "--events", str(events_path)]

    def parse_events(self, job: TrainJob) -> ConsoleParser:
        parser = resume_parser(TrainingConfig(**job.config), job.resume_state)
        parser.validation_held_out = bool(job.validation_items)
        return parser

    def resume_step(self, state_dir: Path) -> int:
        return int(read_train_state(state_dir)["current_step"])

    def outputs(self, output_dir: Path, project_name: str) -> Outputs:
        states = [p.parent for p in Path(output_dir).glob(f"*/{TRAIN_STATE_FILE}")]
        return lora_files(output_dir, project_name, states)

    def preview(self, job: TrainJob, report: "DatasetReport | None") -> Preview:
        """Stage the dataset, render and write both TOML files for the job; the command as it would run."""
        from ...core.train_items import TrainItem  # noqa: PLC0415
        from .prepare import prepare_sd_scripts_run  # noqa: PLC0415
        from .samples import run_prompts  # noqa: PLC0415

        job = self.prepare(job, report)  # the TOML names only what the validator accepted
        config = TrainingConfig(**job.config)
        prepared = prepare_sd_scripts_run(
            config, run_id=job.run_id, image_dir=job.dataset_dir, subsets=job.subsets, dit=job.dit,
            qwen3=job.text_encoder, vae=job.vae, sd_scripts_dir=Path(job.tool_dir) if job.tool_dir else default_checkout(config),
            config_dir=Path(job.run_dir) / "configs", output_dir=Path(job.output_dir),
            mixed_precision=job.precision or "bf16", total_steps=job.total_steps,
            # a dry run's job lists no items: the report's are the same images
            prompts=run_prompts(config, [TrainItem.from_json(i) for i in job.items] or (report.train_items() if report else [])),
            validation_subsets=job.validation_subsets,
        )
        files = {"training_toml": prepared.training_path, "dataset_toml": prepared.dataset_path}
        if prepared.prompt_path is not None:
            files["sample_prompts"] = prepared.prompt_path
        return Preview(files, prepared.command_text)


def default_checkout(config: TrainingConfig) -> Path:
    """Where ensure_sd_scripts installs the pinned commit (install.py)."""
    return cache_root() / f"sd-scripts-{config.sd_scripts_commit}" / "sd-scripts"
