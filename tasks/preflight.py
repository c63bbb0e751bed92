"""Refuse settings this version cannot train, before anything is downloaded or trained."""

from __future__ import annotations

from ..config import TrainingConfig
from ..errors import NotBuiltError

# Settings that exist in the config (for the sd-scripts backend or for later) but that the native
# trainer does not implement: saying so now beats failing after a 5.6 GB download.
_NATIVE_UNBUILT_TIMESTEPS = {"flux_shift", "sigma"}


def unsupported_settings(config: TrainingConfig) -> list[str]:
    problems = []
    if config.sample_every_n_epochs:
        problems.append("sample images during training are not built yet; use --sample-every-n-epochs 0")
    if config.trainer == "sd-scripts" and config.num_gpus > 1:
        problems.append("--num-gpus above 1 is built for the native trainer only; use --trainer native or --num-gpus 1")
    if config.trainer == "native" and config.timestep_sampling in _NATIVE_UNBUILT_TIMESTEPS:
        problems.append(
            f"--timestep-sampling {config.timestep_sampling} is not built in the native trainer; "
            "use sigmoid, uniform or shift, or --trainer sd-scripts"
        )
    return problems


def check_supported(config: TrainingConfig) -> None:
    """Raise NotBuiltError naming every unbuilt setting the config asks for."""
    problems = unsupported_settings(config)
    if problems:
        raise NotBuiltError("; ".join(problems))
