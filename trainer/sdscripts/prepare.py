"""Everything an sd-scripts run needs before launch: both TOML files, the sample prompts and the exact command."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...config import TrainingConfig
from ...core.sample_prompts import SamplePrompt
from .command import build_command, format_command
from .install import accelerate_executable
from .render import RenderedConfigs, render_configs
from .samples import PROMPT_FILE, prompt_file_text, sampling_settings


@dataclass
class PreparedRun:
    configs: RenderedConfigs
    training_path: Path
    dataset_path: Path
    command: list[str]
    prompt_path: Path | None = None

    @property
    def command_text(self) -> str:
        return format_command(self.command)


def prepare_sd_scripts_run(
    config: TrainingConfig,
    *,
    run_id: str,
    image_dir: str,
    dit: str,
    qwen3: str,
    vae: str,
    sd_scripts_dir: Path,
    config_dir: Path,
    output_dir: Path,
    mixed_precision: str,
    total_steps: int | None,
    resume_dir: str | None = None,
    subsets: list[tuple[str, int]] | None = None,
    prompts: Sequence[SamplePrompt] = (),
    validation_subsets: list[tuple[str, int]] | None = None,
) -> PreparedRun:
    """Render, validate and write the training and dataset TOMLs (and the prompt file when the run
    samples); build the launch command. `prompts` are the run's resolved sample prompts
    (samples.run_prompts); `validation_subsets` the staged validation images (staging.stage_validation)."""
    configs = render_configs(
        config, run_id=run_id, image_dir=image_dir, subsets=subsets, dit=dit, qwen3=qwen3, vae=vae, output_dir=str(output_dir),
        mixed_precision=mixed_precision, run_date=dt.date.today(), resume_dir=resume_dir, total_steps=total_steps,
    )
    prompt_path = None
    if prompts and config.sample_every_n_epochs:
        prompt_path = Path(config_dir) / PROMPT_FILE
        prompt_path.parent.mkdir(parents=True, exist_ok=True)
        prompt_path.write_text(prompt_file_text(prompts), encoding="utf-8")
    settings = sampling_settings(config, prompt_path, fresh=resume_dir is None)
    datasets = configs.dataset["datasets"] + ([validation_dataset(config, validation_subsets)] if validation_subsets else [])
    configs = replace(configs, training={**configs.training, **settings}, dataset={**configs.dataset, "datasets": datasets})
    training_path, dataset_path = configs.write(config_dir)
    cmd = build_command(sd_scripts_dir, training_path, dataset_path, python=str(accelerate_executable(sd_scripts_dir)),
                        validation_fix=bool(validation_subsets))
    return PreparedRun(configs, training_path, dataset_path, cmd, prompt_path)


def validation_dataset(config: TrainingConfig, subsets: list[tuple[str, int]]) -> dict[str, Any]:
    """A dataset table sd-scripts validates on and never trains on: all of it split off (validation_split 1.0).

    sd-scripts at 48d368fa has no validation-folder option; a split of 1.0 leaves the training copy of
    this dataset empty and puts every image in its validation copy. No caption dropout: the loss is
    measured on the captions as written.
    """
    return {
        "resolution": config.resolution,
        "validation_split": 1.0,
        "validation_seed": config.seed,
        "subsets": [
            {"num_repeats": 1, "image_dir": str(folder), "caption_extension": ".txt", "caption_dropout_rate": 0.0}
            for folder, _ in subsets
        ],
    }


def folder_subsets(items) -> list[tuple[str, int]]:
    """One (folder, repeats) per folder holding trainable images, from the dataset report's items."""
    seen: dict[tuple[str, int], None] = {}
    for item in items:
        seen[(str(Path(item.image_path).parent), int(item.repeats))] = None
    return list(seen)
