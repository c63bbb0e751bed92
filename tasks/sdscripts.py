"""sd-scripts backend in the flow: the dry run writes both TOML files and shows the exact command."""

from __future__ import annotations


from prefect import get_run_logger, task

from ..config import TrainingConfig, cache_root
from ..models import registry
from ..models.download import ready_models
from ..trainer.sdscripts.prepare import folder_subsets, prepare_sd_scripts_run
from .storage import open_run_store


@task(name="sd-scripts-configs")
def sd_scripts_dry_run_task(config: TrainingConfig, report, plan, run_id: str) -> dict:
    """Render and store both TOML files for this run and return the launch command."""
    paths = ready_models(config.base_model, "sd-scripts")
    models_note = "" if paths else " (model paths are where `anima-lora models download --backend sd-scripts` puts them)"
    fallback = cache_root() / "models" / registry.SINGLE_FILE_REPO
    dit_name = registry.base_model(config.base_model).dit.filename
    work = config.resolved_work_dir() / "sd-scripts" / run_id
    prepared = prepare_sd_scripts_run(
        config, run_id=run_id, image_dir=report.root, subsets=folder_subsets(report.train_items()),
        dit=str(paths.dit if paths else fallback / dit_name),
        qwen3=str(paths.text_encoder if paths else fallback / registry.TEXT_ENCODER.filename),
        vae=str(paths.vae if paths else fallback / registry.VAE.filename),
        sd_scripts_dir=cache_root() / f"sd-scripts-{config.sd_scripts_commit}" / "sd-scripts",
        config_dir=work / "configs", output_dir=work / "output",
        mixed_precision=plan.precision,
        total_steps=plan.steps.total_steps,
    )
    store = open_run_store(config)
    for path in (prepared.training_path, prepared.dataset_path):
        store.publish_file(path, f"configs/{run_id}/{path.name}")
    get_run_logger().info("sd-scripts command%s:\n%s", models_note, prepared.command_text)
    return {"command": prepared.command_text, "training_toml": store.path("configs", run_id, prepared.training_path.name),
            "dataset_toml": store.path("configs", run_id, prepared.dataset_path.name)}
