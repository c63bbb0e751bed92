"""sd-scripts backend in the flow: the dry run writes both TOML files and shows the exact command."""

from __future__ import annotations

from prefect import get_run_logger, task

from ..config import TrainingConfig
from ..runner.prepare import sd_scripts_configs
from .storage import open_run_store


@task(name="sd-scripts-configs")
def sd_scripts_dry_run_task(config: TrainingConfig, report, plan, run_id: str) -> dict:
    """Render and store both TOML files for this run and return the launch command."""
    result = sd_scripts_configs(config, report, plan, run_id, open_run_store(config))
    get_run_logger().info("sd-scripts command%s:\n%s", result["models_note"], result["command"])
    return result
