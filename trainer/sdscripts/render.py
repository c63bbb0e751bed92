"""The sd-scripts training and dataset TOML files, rendered from `TrainingConfig` (seed notebook keys).

The seed's keys and order are kept (seed-behaviour §5) except its mistakes: the no-op
`noise_offset`/`multires_noise_discount` are dropped, warm-up is the native trainer's (effective.py),
optimizer arguments follow the optimizer, and every value is checked against sd-scripts' choices,
since a `--config_file` TOML skips its argparse checks. Step counts, warm-up, precision and the
optimizer are effective.py's numbers, so both backends train the same schedule.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ...config import TrainingConfig
from ...effective import resolve_optimizer, warmup_steps
from ...errors import UserInputError
from .backend import SdScriptsBackend

# Config names -> sd-scripts `optimizer_type` (matched case-insensitively by sd-scripts).
OPTIMIZER_NAMES = {"adamw8bit": "AdamW8bit", "adamw": "AdamW", "adafactor": "Adafactor"}

# Allowed values, from sd-scripts 48d368fa (train_util.py, anima_train_utils.py) and the
# transformers/diffusers scheduler enums it dispatches to.
TIMESTEP_SAMPLING = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay", "piecewise_constant", "adafactor",
)  # fmt: skip
SD_OPTIMIZERS = (
    "AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
    "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdamPreprint",
    "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy",
    "Adafactor", "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree",
)  # fmt: skip
# Optimizers whose constructors take no `betas` (the UI fork passed betas to SGD and crashed).
NO_BETAS = ("sgdnesterov", "sgdnesterov8bit", "adafactor", "dadaptadagrad", "dadaptsgd", "sgdschedulefree")
MIXED_PRECISION = ("no", "fp16", "bf16")
SAVE_PRECISION = ("float", "fp16", "bf16")
SAVE_MODEL_AS = ("ckpt", "pt", "safetensors")
WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none", "uniform")
ATTN_MODES = ("torch", "xformers", "flash", "sageattn", "sdpa")
_RUN_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def config_file_names(project: str, run_id: str) -> tuple[str, str]:
    """Training and dataset TOML names; the run id keeps two runs on one day apart (seed bug 11.1.4)."""
    if not _RUN_ID.match(run_id):
        raise UserInputError(f"run id {run_id!r} must use only letters, digits, '.', '_' and '-'")
    return f"{project}_training_config_{run_id}.toml", f"{project}_dataset_config_{run_id}.toml"


def optimizer_args(config: TrainingConfig) -> list[str]:
    """`optimizer_args` strings (sd-scripts `literal_eval`s each value) that the optimizer accepts."""
    args = [f"weight_decay={config.weight_decay}"]
    if resolve_optimizer(config.optimizer, SdScriptsBackend.numbers) == "adafactor":
        # With relative_step (transformers' default) Adafactor ignores our LR and scheduler.
        return args + ["relative_step=False", "scale_parameter=False", "warmup_init=False"]
    beta1, beta2 = config.betas
    return args + [f"betas=[{beta1}, {beta2}]"]


def _number(value: float) -> int | float:
    """Whole numbers as TOML integers (the seed wrote `network_alpha = 20`), others as floats."""
    return int(value) if float(value).is_integer() else float(value)


def render_training_toml(
    config: TrainingConfig,
    *,
    dit: str,
    qwen3: str,
    vae: str,
    output_dir: str,
    mixed_precision: str,
    run_date: dt.date | str,
    total_steps: int,
    resume_dir: str | None = None,
    save_state: bool = True,
    save_every_n_steps: int | None = None,
) -> dict[str, Any]:
    """The flat training TOML as a dict, in the seed's key order.

    `mixed_precision` and `total_steps` are the plan's effective values (effective.Effective.precision
    and .total_steps): bf16/fp16/no, never auto, and the optimizer steps sd-scripts will count from
    max_train_epochs. The warm-up is derived from them. `resume_dir` resumes from an sd-scripts state.

    Raises:
        ValueError: no step count (a caller bug, not a user's); an unresolved precision is refused by
            validate_sdscripts_args.
    """
    if total_steps is None:
        raise ValueError("render_training_toml needs the effective total steps (the plan's), got None")
    training: dict[str, Any] = {
        "pretrained_model_name_or_path": str(dit),
        "qwen3": str(qwen3),
        "vae": str(vae),
        "network_module": "networks.lora_anima",
        "network_dim": config.network_dim,
        "network_alpha": _number(config.network_alpha),
        "network_train_unet_only": True,  # required while text-encoder outputs are cached
        "learning_rate": float(config.learning_rate),
        "optimizer_type": OPTIMIZER_NAMES[resolve_optimizer(config.optimizer, SdScriptsBackend.numbers)],
        "optimizer_args": optimizer_args(config),
        "lr_scheduler": config.lr_scheduler,
        "lr_scheduler_num_cycles": config.lr_scheduler_num_cycles,
        "lr_warmup_steps": warmup_steps(config.lr_warmup_steps, total_steps, config.lr_scheduler),
        "max_train_epochs": config.max_train_epochs,
        "train_batch_size": config.batch_size or 1,  # auto is 1 here (effective.resolve_fast_path)
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_grad_norm": float(config.max_grad_norm),
        "seed": config.seed,
        "timestep_sampling": config.timestep_sampling,
        "sigmoid_scale": float(config.sigmoid_scale),
        "discrete_flow_shift": float(config.discrete_flow_shift),
        "qwen3_max_token_length": 512,
        "t5_max_token_length": 512,
        "mixed_precision": mixed_precision,
        "gradient_checkpointing": config.gradient_checkpointing is not False,  # unset: on, as effective.py resolves it
        "cache_latents": True,
        "cache_text_encoder_outputs": True,
        "vae_chunk_size": 64,
        "vae_disable_cache": True,
        "output_dir": str(output_dir),
        "output_name": config.project_name,
        "save_model_as": "safetensors",
        "save_precision": "bf16",
        # 0 means "only the final LoRA" / "keep all" in our config; sd-scripts spells both as unset.
        "save_every_n_epochs": config.save_every_n_epochs or None,
        "save_last_n_epochs": config.save_last_n_epochs or None,
        "shuffle_caption": False,  # must stay false while text-encoder outputs are cached
        "caption_extension": ".txt",
        "training_comment": f"Anima LoRA - {_date_text(run_date)}",
    }
    if save_state:
        training["save_state"] = True
        training["save_every_n_steps"] = save_every_n_steps
    if resume_dir is not None:
        training["resume"] = str(resume_dir)
        # Batch skipping is wrong with gradient accumulation (sd-scripts issue #2407): without it
        # sd-scripts restarts the interrupted epoch from its first batch instead.
        if config.gradient_accumulation_steps == 1:
            training["skip_until_initial_step"] = True
    return {k: v for k, v in training.items() if v is not None}


def render_dataset_toml(
    config: TrainingConfig, *, image_dir: str, subsets: list[tuple[str, int]] | None = None
) -> dict[str, Any]:
    """The dataset TOML as a dict (seed-behaviour §5.2), with `.txt` captions.

    sd-scripts reads only the images directly inside each subset's `image_dir`, so a dataset with
    nested or kohya `N_name` folders passes `subsets` = [(folder, repeats), ...], one per folder. The
    flow passes the staged folders (staging.stage_dataset): never the user's, where sd-scripts would
    also read the files the validator skipped.
    """
    folders = subsets or [(str(image_dir), config.repeats)]
    return {
        "general": {
            "resolution": config.resolution,
            "enable_bucket": True,
            "bucket_no_upscale": False,
            "bucket_reso_steps": config.bucket_reso_steps,
            "min_bucket_reso": config.min_bucket_reso,
            "max_bucket_reso": config.max_bucket_reso,
        },
        "datasets": [
            {
                "resolution": config.resolution,
                "subsets": [
                    {
                        "num_repeats": int(repeats),
                        "image_dir": str(folder),
                        "caption_extension": ".txt",  # sd-scripts' default is ".caption"
                        "caption_dropout_rate": float(config.caption_dropout),
                    }
                    for folder, repeats in folders
                ],
            }
        ],
    }


def to_toml(d: dict[str, Any]) -> str:
    """TOML text of a rendered dict."""
    return tomli_w.dumps(d)


def _date_text(run_date: dt.date | str) -> str:
    return run_date.isoformat() if isinstance(run_date, dt.date) else str(run_date)


def _check_choice(errors: list[str], table: dict[str, Any], key: str, choices: tuple, *, fold: bool = False) -> None:
    if key not in table:
        return
    value = table[key]
    probe = value.lower() if fold and isinstance(value, str) else value
    allowed = [c.lower() for c in choices] if fold else list(choices)
    if probe not in allowed:
        errors.append(f"{key}={value!r} is not allowed by sd-scripts; use one of: {', '.join(map(str, choices))}")


def _check_training(training: dict[str, Any], errors: list[str]) -> None:
    _check_choice(errors, training, "timestep_sampling", TIMESTEP_SAMPLING)
    _check_choice(errors, training, "mixed_precision", MIXED_PRECISION)
    _check_choice(errors, training, "save_precision", SAVE_PRECISION)
    _check_choice(errors, training, "save_model_as", SAVE_MODEL_AS)
    _check_choice(errors, training, "weighting_scheme", WEIGHTING_SCHEMES)
    _check_choice(errors, training, "attn_mode", ATTN_MODES)
    scheduler = str(training.get("lr_scheduler", "constant"))
    if scheduler.split(":")[0] not in LR_SCHEDULERS:
        allowed = ", ".join(LR_SCHEDULERS)
        errors.append(f"lr_scheduler={scheduler!r} is not allowed by sd-scripts; use one of: {allowed}")
    if scheduler in ("constant", "adafactor") and training.get("lr_warmup_steps", 0):
        errors.append(f"lr_warmup_steps={training['lr_warmup_steps']!r} must be 0 with lr_scheduler={scheduler!r}")
    optimizer = str(training.get("optimizer_type", "AdamW"))
    if "." not in optimizer:  # a dotted class path is imported as-is by sd-scripts
        _check_choice(errors, training, "optimizer_type", SD_OPTIMIZERS, fold=True)
    if optimizer.lower() in NO_BETAS and any(str(a).startswith("betas=") for a in training.get("optimizer_args", [])):
        errors.append(f"optimizer_args: {optimizer} takes no betas; remove 'betas=...'")
    if training.get("fp8_base") or training.get("fp8_base_unet"):
        errors.append("fp8_base: Anima does not support fp8 in sd-scripts; remove it")
    if training.get("cache_text_encoder_outputs") and training.get("shuffle_caption"):
        errors.append("shuffle_caption=True cannot be combined with cache_text_encoder_outputs; set it to false")
    if training.get("skip_until_initial_step") and training.get("gradient_accumulation_steps", 1) != 1:
        errors.append("skip_until_initial_step=True is wrong with gradient_accumulation_steps > 1 (sd-scripts #2407)")
    if training.get("caption_extension", ".txt") != ".txt":
        errors.append(f"caption_extension={training['caption_extension']!r}: captions are .txt files; use '.txt'")


def _check_dataset(dataset: dict[str, Any], errors: list[str]) -> None:
    tables = [("general", dataset.get("general", {}))]
    for i, ds in enumerate(dataset.get("datasets", [])):
        tables.append((f"datasets[{i}]", ds))
        tables += [(f"datasets[{i}].subsets[{j}]", sub) for j, sub in enumerate(ds.get("subsets", []))]
    for where, table in tables:
        steps = table.get("bucket_reso_steps")
        if steps is not None and (not isinstance(steps, int) or steps <= 0 or steps % 16):
            errors.append(f"{where}.bucket_reso_steps={steps!r} must be a positive multiple of 16 for Anima (e.g. 64)")
        ext = table.get("caption_extension")
        if ext is not None and ext != ".txt":
            errors.append(f"{where}.caption_extension={ext!r}: captions are .txt files; use '.txt'")
    subsets = [t for w, t in tables if ".subsets[" in w]
    if not subsets:
        errors.append("dataset: no [[datasets.subsets]] with an image_dir; render it with render_dataset_toml")
    for sub in subsets:
        if not sub.get("image_dir"):
            errors.append("datasets.subsets.image_dir is missing: point it at the folder of images")


def validate_sdscripts_args(training: dict[str, Any], dataset: dict[str, Any]) -> None:
    """Check the rendered files against sd-scripts' choices before launch (TOML skips argparse).

    Raises:
        UserInputError: naming each bad key, its value and the allowed values.
    """
    errors: list[str] = []
    _check_training(training, errors)
    _check_dataset(dataset, errors)
    if errors:
        raise UserInputError("sd-scripts settings rejected: " + "; ".join(errors))



@dataclass(frozen=True)
class RenderedConfigs:
    """Both files of one run: dicts, per-run names and TOML texts (the caller stores them in the run store)."""

    training: dict[str, Any]
    dataset: dict[str, Any]
    training_name: str
    dataset_name: str

    @property
    def training_text(self) -> str:
        return to_toml(self.training)

    @property
    def dataset_text(self) -> str:
        return to_toml(self.dataset)

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write both files into a local folder; returns (training path, dataset path)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        training_path, dataset_path = folder / self.training_name, folder / self.dataset_name
        training_path.write_text(self.training_text, encoding="utf-8")
        dataset_path.write_text(self.dataset_text, encoding="utf-8")
        return training_path, dataset_path


def render_configs(
    config: TrainingConfig, *, run_id: str, image_dir: str, subsets: list[tuple[str, int]] | None = None,
    **training_kwargs: Any,
) -> RenderedConfigs:
    """Render, validate and name both files; `training_kwargs` go to `render_training_toml`.

    Raises:
        UserInputError: a value sd-scripts would reject (see `validate_sdscripts_args`).
    """
    training = render_training_toml(config, **training_kwargs)
    dataset = render_dataset_toml(config, image_dir=image_dir, subsets=subsets)
    validate_sdscripts_args(training, dataset)
    training_name, dataset_name = config_file_names(config.project_name, run_id)
    return RenderedConfigs(training, dataset, training_name, dataset_name)

