"""Everything an sd-scripts run needs before launch: both TOML files and the exact command."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from ...config import TrainingConfig
from .command import build_command, format_command
from .install import accelerate_executable
from .render import RenderedConfigs, render_configs


@dataclass
class PreparedRun:
    configs: RenderedConfigs
    training_path: Path
    dataset_path: Path
    command: list[str]

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
) -> PreparedRun:
    """Render, validate and write the training and dataset TOMLs; build the launch command."""
    configs = render_configs(
        config, run_id=run_id, image_dir=image_dir, subsets=subsets, dit=dit, qwen3=qwen3, vae=vae, output_dir=str(output_dir),
        mixed_precision=mixed_precision, run_date=dt.date.today(), resume_dir=resume_dir, total_steps=total_steps,
    )
    training_path, dataset_path = configs.write(config_dir)
    cmd = build_command(sd_scripts_dir, training_path, dataset_path, python=str(accelerate_executable(sd_scripts_dir)))
    return PreparedRun(configs, training_path, dataset_path, cmd)


def folder_subsets(items) -> list[tuple[str, int]]:
    """One (folder, repeats) per folder holding trainable images, from the dataset report's items."""
    seen: dict[tuple[str, int], None] = {}
    for item in items:
        seen[(str(Path(item.image_path).parent), int(item.repeats))] = None
    return list(seen)
