"""Prefect task for the models stage; all logic lives in anima_lora_flow.models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

from ..config import TrainingConfig
from ..models.download import ModelInputError, ModelPaths, ensure_models, ready_models, validate_models_dir

from .retry import retry_unless_user_error


def _on_disk(config: TrainingConfig) -> ModelPaths | None:
    """The model paths a cached result would return, if they still exist (a new VM has lost them)."""
    if not config.models_dir:
        return ready_models(config.base_model, config.trainer)
    try:
        return validate_models_dir(config.models_dir)
    except ModelInputError:  # the task body will raise it with the same message
        return None


@dataclass
class ModelsOnDisk(CachePolicy):
    """INPUTS + TASK_SOURCE, vetoed when the model folders are gone, so a cached result never points at nothing."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        config = inputs.get("config")
        paths = _on_disk(config) if isinstance(config, TrainingConfig) else None
        if paths is None:
            return None
        base = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        return hash_objects(base, repr(paths)) if base else None


# These retries are the repo listing's only retry layer; a file download has huggingface_hub's own, and
# its errors come marked `retried`, which retry_unless_user_error does not retry again (models/hub.py).
@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=retry_unless_user_error,
    cache_policy=ModelsOnDisk(),
)
def download_models_task(config: TrainingConfig) -> ModelPaths:
    """Make the base model files present and verified: models_dir as is, else download/copy/convert."""
    if config.models_dir:
        return validate_models_dir(config.models_dir)
    return ensure_models(config.base_model, backend=config.trainer, durable_cache=config.models_cache)
