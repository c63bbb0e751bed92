"""Refuse what this version or this machine cannot train, before anything is downloaded or trained."""

from __future__ import annotations

import importlib.util

from ..config import TrainingConfig
from ..errors import NotBuiltError, UserInputError, setting
from ..storage.location import ensure_cache_folder, ensure_hf_cache_folder, ensure_local_folder
from ..trainer.registry import BACKENDS, backend_for
from ..trainer.sample_plan import check_sample_prompts

# The module diffusers looks for before it uses each attention backend, and how to get it.
_FLASH = ("flash_attn", "pip install flash-attn")
_FLASH_3 = ("flash_attn_3", "build FlashAttention 3 from https://github.com/Dao-AILab/flash-attention (hopper/)")
_KERNELS = ("kernels", "pip install kernels")
_SAGE = ("sageattention", "pip install sageattention")
_ATTENTION_PACKAGES = {
    "flash": _FLASH,
    "flash_varlen": _FLASH,
    "_flash_3": _FLASH_3,
    "_flash_varlen_3": _FLASH_3,
    "sage": _SAGE,
    "sage_varlen": _SAGE,
    "xformers": ("xformers", "pip install xformers"),
    "_native_npu": ("torch_npu", "pip install torch-npu"),
    "_native_xla": ("torch_xla", "pip install torch-xla"),
}
BNB_INSTALL = "pip install bitsandbytes"  # the [bnb] extra's package; this package is not on PyPI


def unsupported_settings(config: TrainingConfig) -> list[str]:
    problems = []
    backend = backend_for(config.trainer)
    if config.num_gpus > 1 and not backend.multi_gpu:
        multi = [name for name, other in BACKENDS.items() if other.multi_gpu]
        problems.append(f"{setting('num_gpus')} above 1 is built for the {' and '.join(multi)} trainer only; use "
                        f"{' or '.join(setting('trainer', name) for name in multi)} or {setting('num_gpus', 1)}")
    # Saying so now beats failing after a 5.6 GB download.
    problems += backend.unsupported(config)
    return problems


def missing_packages(config: TrainingConfig) -> list[str]:
    """The optional packages the chosen settings need that are not installed here, each with its install line
    (settings as errors.setting placeholders: the error that joins them renders them).

    find_spec only: importing flash-attn or bitsandbytes can take seconds or fail loudly on a CPU machine.
    """
    missing = []
    backend = config.attention_backend
    module, install = _ATTENTION_PACKAGES.get(backend) or (_KERNELS if backend.endswith("_hub") else (None, None))
    if module and not _installed(module):
        missing.append(f"{setting('attention_backend', backend)} needs the {module} package: {install}, "
                       f"or use {setting('attention_backend', 'native')}")
    # A backend in its own virtual environment (sd-scripts) installs it from its own requirements.
    if backend_for(config.trainer).optimizer_here and config.optimizer == "adamw8bit" and not _installed("bitsandbytes"):
        missing.append(f"{setting('optimizer', 'adamw8bit')} needs bitsandbytes: {BNB_INSTALL}, "
                       f"or use {setting('optimizer', 'auto')} (torch AdamW on the native trainer)")
    return missing


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


def check_supported(config: TrainingConfig) -> None:
    """Refuse settings this version does not build (NotBuiltError), then settings whose package is missing here.

    Raises:
        NotBuiltError: every unbuilt setting the config asks for.
        UserInputError: every optional package the settings need that is not installed, with its install line;
            a sample prompt file that cannot be read, has no prompt or asks for a size outside the buckets.
    """
    problems = unsupported_settings(config)
    if problems:
        raise NotBuiltError("; ".join(problems))
    missing = missing_packages(config)
    if missing:
        raise UserInputError("; ".join(missing))
    check_sample_prompts(config)  # reads the prompt file: a bad line is refused now, not an hour into training


def ensure_local_folders(config: TrainingConfig, *, downloads: bool = True) -> None:
    """Create the cache and work folders, and check the download cache, or refuse naming the setting to change.

    Call it after the storage is resolved: a work folder on Google Drive needs Drive mounted first.
    `downloads=False` skips the Hugging Face cache (models_dir is used as is, or nothing is downloaded).
    """
    ensure_cache_folder()  # Prefect's home and the models' download state live here whatever work_dir says
    if config.work_dir:
        ensure_local_folder(config.resolved_work_dir(), setting("work_dir"))
    else:
        ensure_cache_folder(config.resolved_work_dir(), label="work folder", alternative=f", or pass {setting('work_dir')}")
    if downloads and not config.models_dir:
        ensure_hf_cache_folder()
