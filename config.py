"""The one configuration model: every setting, its default (the seed notebook's) and why.

CLI flags, the flow's parameters (and so the Prefect UI form), the sd-scripts TOML files, the LoRA
metadata and the resume fingerprint are all derived from `TrainingConfig`. Secrets are never fields.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .core.backends import TrainerBackend  # the names live in the backend table; re-exported here
from .errors import UserInputError, render, setting

BaseModelName = Literal["anima-base-v1.0", "anima-preview3-base", "anima-preview", "anima-preview2"]
Optimizer = Literal["auto", "adamw", "adamw8bit", "adafactor"]
Scheduler = Literal[
    "cosine_with_restarts", "cosine", "linear", "constant", "constant_with_warmup", "polynomial"
]
TimestepSampling = Literal["sigmoid", "uniform", "shift", "flux_shift", "sigma"]
Precision = Literal["auto", "bf16", "fp16", "no"]
OnOverrun = Literal["auto", "stop", "resume", "proceed"]
CompileMode = Literal["auto", "none", "blocks", "model", "cuda-graphs"]

# The project name becomes folder and file names (<name>-000001.safetensors) on Windows, macOS, Linux
# and Google Drive, so it keeps to what all of them accept.
PROJECT_NAME_MAX = 100
_PROJECT_NAME_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))})
PROJECT_NAME_RULE = (
    f"a project name is 1 to {PROJECT_NAME_MAX} letters, digits, '.', '_' or '-', starts with a letter or digit, "
    "has no '..', does not end in '.', is not a reserved Windows name (CON, PRN, AUX, NUL, COM0-9, LPT0-9) "
    "and leaves out .safetensors"
)

ResumeRule = Literal["match", "continue", "free"]

# How a resumed run treats each setting that differs from its saved state's (README.md, "Resuming").
#   match     refused, naming the setting: it changes the network's shape, what a step means or the
#             order the data comes in, so the saved weights, optimizer moments and position do not fit
#   continue  training goes on from the state under the new value, with a warning naming the step
#   free      where things live, how a session runs, speed: not what is trained; no message
# The dataset's *content* (its fingerprint) must match as well; its location is free.
RESUME_RULES: dict[str, ResumeRule] = {
    "project_name": "free",  # names the store folder, where the state was found
    "dataset": "free",
    "storage": "free",
    "work_dir": "free",
    "base_model": "match",
    "models_dir": "free",  # the loaded model's blocks and width are compared by the trainer instead
    "models_cache": "free",
    "network_dim": "match",
    "network_alpha": "match",
    "learning_rate": "continue",
    "max_train_epochs": "continue",
    "batch_size": "match",
    "gradient_accumulation_steps": "match",
    "num_gpus": "match",  # sets how many micro-batches make a step
    "optimizer": "match",  # the saved moments belong to it
    "weight_decay": "continue",
    "betas": "continue",
    "lr_scheduler": "continue",
    "lr_scheduler_num_cycles": "continue",
    "lr_warmup_steps": "continue",
    "max_grad_norm": "continue",
    "seed": "match",  # the data order and the noise
    "timestep_sampling": "match",
    "sigmoid_scale": "match",
    "discrete_flow_shift": "match",
    "resolution": "match",
    "repeats": "match",
    "caption_dropout": "match",
    "min_bucket_reso": "match",
    "max_bucket_reso": "match",
    "bucket_reso_steps": "match",
    "mixed_precision": "continue",
    "gradient_checkpointing": "free",
    "attention_backend": "free",
    "compile_blocks": "free",
    "compile_mode": "free",  # how the same math is executed
    "save_every_n_epochs": "continue",
    "save_last_n_epochs": "continue",
    "save_state_every_minutes": "free",
    "keep_last_states": "free",
    "save_kohya_lora": "continue",
    "restart": "free",
    "trainer": "match",
    "sd_scripts_commit": "free",
    "session_budget_hours": "free",
    "on_overrun": "free",
    "sample_every_n_epochs": "continue",
    "sample_prompts": "continue",
    "validation_split": "match",  # which images train
    "validation_dataset": "continue",  # measured only; the best epoch so far restarts with a new set
}
# Changing one of these re-plans the learning-rate schedule from the resumed step.
_SCHEDULE_FIELDS = frozenset({"learning_rate", "max_train_epochs", "lr_scheduler", "lr_scheduler_num_cycles", "lr_warmup_steps"})


class TrainingConfig(BaseModel):
    """Settings for one Anima LoRA run. Defaults are those of the Colab notebook this tool replaces."""

    # strict: a config file's `restart = "yes"` or `network_dim = true` is a mistake to report, not a
    # value to coerce (an int still fits a float field). CLI flags arrive already typed by argparse.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    # --- Project and data -----------------------------------------------------------------
    project_name: str = Field(
        "my_lora",
        description="Name of the LoRA and of its folder in the storage root. Letters, digits, '.', '_' and '-'.",
    )
    dataset: str = Field(
        ...,
        description=(
            "Training images with .txt captions: a local folder, a .zip, a Google Drive share link or "
            "file id, an http(s) URL, or any fsspec URL (gs://, s3://, hf://...)."
        ),
    )
    storage: str = Field(
        "./anima-runs",
        description=(
            "Durable storage root for checkpoints, states and logs (a local folder, "
            "/content/drive/MyDrive/..., gs://, s3://, hf://). Runs resume from here after a disconnect."
        ),
    )
    work_dir: str | None = Field(
        None,
        description="Local scratch folder for the extracted dataset and caches. Default: a folder under the system cache.",
    )

    # --- Model ------------------------------------------------------------------------------
    base_model: BaseModelName = Field("anima-base-v1.0", description="Which Anima DiT to train on.")
    models_dir: str | None = Field(
        None,
        description=(
            "A local Diffusers-format Anima folder to use instead of downloading "
            "(the demo points this at its generated tiny model)."
        ),
    )
    models_cache: str | None = Field(
        None,
        description="Optional durable copy of the downloaded models (for example on Drive) so a new session copies instead of downloading.",
    )

    # --- Network ----------------------------------------------------------------------------
    network_dim: int = Field(20, ge=1, le=512, description="LoRA rank. Lower uses less memory (8 helps on small GPUs).")
    network_alpha: float = Field(20, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")

    # --- Optimisation -----------------------------------------------------------------------
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate.")
    max_train_epochs: int = Field(10, ge=1, le=10_000, description="Passes over the (repeated) dataset.")
    batch_size: int = Field(
        1, ge=0, le=64,
        description="Images per step. A batch holds images of one aspect-ratio bucket. 0 = auto: the largest that fits "
        "the GPU without slowing the run (native trainer; sd-scripts: 1). The batch auto picked is recorded in the state, and a resume goes on at it.",
    )  # fmt: skip
    gradient_accumulation_steps: int = Field(1, ge=1, le=128, description="Micro-batches per optimizer step.")
    num_gpus: int = Field(
        1, ge=1, le=16,
        description="GPUs to train on, data parallel (Kaggle's 2x T4: 2). Each GPU takes its own micro-batches, "
        "so an epoch has this many times fewer steps.",
    )  # fmt: skip
    optimizer: Optimizer = Field(
        "auto",
        description="auto = AdamW (torch's fused kernel on a GPU) for the native trainer, AdamW8bit (the seed's) for "
        "sd-scripts. adamw8bit needs bitsandbytes (pip install bitsandbytes).",
    )
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas.")
    lr_scheduler: Scheduler = Field("cosine_with_restarts", description="Learning-rate schedule.")
    lr_scheduler_num_cycles: int = Field(1, ge=1, description="Restarts of cosine_with_restarts.")
    lr_warmup_steps: int = Field(100, ge=0, description="Warm-up steps; clamped to a tenth of the run when the run is short.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for data order, noise and LoRA initialisation.")

    # --- Diffusion objective ------------------------------------------------------------------
    timestep_sampling: TimestepSampling = Field("sigmoid", description="How the noise level is drawn each step.")
    sigmoid_scale: float = Field(1.0, gt=0, description="Scale of the logit-normal draw for 'sigmoid'.")
    discrete_flow_shift: float = Field(1.0, gt=0, description="Shift used by 'shift' sampling.")

    # --- Data -------------------------------------------------------------------------------
    resolution: int = Field(768, ge=256, le=2048, description="Training resolution; bucket areas are about resolution squared.")
    repeats: int = Field(5, ge=1, le=1000, description="How often each image is seen per epoch.")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="Share of steps trained with an empty caption.")
    min_bucket_reso: int = Field(256, ge=64, description="Smallest bucket side.")
    max_bucket_reso: int = Field(4096, ge=256, description="Largest bucket side.")
    bucket_reso_steps: int = Field(64, ge=16, description="Bucket sides are multiples of this (a multiple of 16).")

    # --- Precision and memory -----------------------------------------------------------------
    mixed_precision: Precision = Field(
        "auto",
        description="auto = bf16 where the GPU has native bf16, fp16 otherwise (a T4 emulates bf16 slowly).",
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations to save memory (slower). Unset = the planner's choice: off where the GPU "
        "has the memory, on otherwise (always on for sd-scripts).",
    )
    attention_backend: str = Field(
        "native",
        description="diffusers attention backend: native (PyTorch SDPA), _native_cudnn, flash, sage, xformers... (non-native ones need their package).",
    )
    compile_blocks: bool = Field(
        False, description="Compile each transformer block with torch.compile (GPU; faster steps after a one-time compile). Same as compile_mode = blocks."
    )
    compile_mode: CompileMode = Field(
        "auto",
        description="How the training step runs: none (eager), blocks (each block compiled), model (the whole forward and loss compiled), cuda-graphs (compiled and captured as CUDA graphs; CUDA only). auto = the planner's choice for the GPU (eager on a CPU).",
    )

    # --- Saving and resume --------------------------------------------------------------------
    save_every_n_epochs: int = Field(1, ge=0, description="Save a LoRA every N epochs (0: only the final one).")
    save_last_n_epochs: int = Field(4, ge=0, description="Keep the last N epoch LoRAs (0 keeps all).")
    save_state_every_minutes: float = Field(
        15.0, ge=0, description="Save a full resumable state at least this often (0: only at epoch ends)."
    )
    keep_last_states: int = Field(2, ge=1, description="Full states kept in storage.")
    save_kohya_lora: bool = Field(
        False, description="Also save each LoRA with kohya's lora_unet_* keys (<name>.kohya.safetensors), for sd-scripts tools."
    )
    restart: bool = Field(False, description="Ignore saved states of this project and start from step 0.")

    # --- Backend and session --------------------------------------------------------------------
    trainer: TrainerBackend = Field("native", description="native (diffusers + peft) or sd-scripts (kohya).")
    sd_scripts_commit: str = Field("48d368fa", description="sd-scripts commit to install for the sd-scripts backend.")
    session_budget_hours: float | None = Field(
        None, gt=0, description="Hours this session may run. Default: the platform's limit (Colab/Kaggle 12 h)."
    )
    on_overrun: OnOverrun = Field(
        "auto",
        description="When the run does not fit the session: stop, resume across sessions, or proceed. auto = resume with durable storage, else stop.",
    )
    sample_every_n_epochs: int = Field(
        0, ge=0,
        description="Sample images (base model beside the LoRA) every N epochs, at the end of the run and when a session stops (0: off).",
    )
    validation_split: float = Field(
        0.0, ge=0, le=0.5,
        description="Fraction of the dataset's images held out for the validation loss (chosen by seed and image, the same on every resume). 0: a fixed few training images measure it instead.",
    )
    validation_dataset: str | None = Field(
        None,
        description="Held-out images with .txt captions for the validation loss, given like dataset (folder, .zip, link, URL).",
    )
    sample_prompts: str = Field(
        "", json_schema_extra={"metavar": "FILE"},
        description="A text file of sample prompts, one per line, with sd-scripts' options --w --h --s --d --l --n --fs. Empty: a few of the dataset's own captions.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _normalise(cls, value: Any, info: ValidationInfo) -> Any:
        """Choices in their canonical spelling, finite floats, and betas as a pair from a list."""
        annotation = unwrap_optional(cls.model_fields[info.field_name].annotation)
        if typing.get_origin(annotation) is Literal:
            return canonical_choice(typing.get_args(annotation), value)
        if annotation is float and isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if typing.get_origin(annotation) is tuple:  # betas: JSON, TOML and argparse all give a list
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"needs two numbers, such as [0.9, 0.99], got {value!r}")
            for item in value:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"must be two finite numbers, got {item}")
            return tuple(value)
        return value

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"each Adam beta must be at least 0 and below 1 (e.g. 0.9 0.99), got {value[0]:g} {value[1]:g}")
        return value

    @field_validator("attention_backend")
    @classmethod
    def _check_attention_backend(cls, value: str) -> str:
        value = value.strip().lower()  # every diffusers backend name is lower case
        if value == "native":
            return value
        from diffusers.models.attention_dispatch import AttentionBackendName  # noqa: PLC0415 - heavy, and only for non-defaults

        names = sorted(b.value for b in AttentionBackendName)
        if value not in names:
            raise ValueError(f"unknown attention backend {value!r}; use native, or one of: {', '.join(names)}")
        return value

    @field_validator("project_name")
    @classmethod
    def _check_project_name(cls, value: str) -> str:
        problem = project_name_problem(value)
        if problem:
            raise ValueError(f"{_shown(value)} {problem}; {PROJECT_NAME_RULE}")
        return value

    @field_validator("dataset", "storage", "validation_dataset")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("bucket_reso_steps")
    @classmethod
    def _check_bucket_steps(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16 (Anima needs it), got {value}")
        return value

    @model_validator(mode="after")
    def _one_validation_set(self) -> "TrainingConfig":
        if self.validation_split > 0 and self.validation_dataset:
            raise ValueError(render(
                f"{setting('validation_split')} and {setting('validation_dataset')} both choose the held-out images; "
                "give one of them"
            ))
        return self

    @model_validator(mode="after")
    def _check_buckets(self) -> "TrainingConfig":
        # Every setting named: a cross-field error has no single key to blame. Rendered now, for whoever
        # reads it (pydantic keeps the message's text, not the error).
        if self.min_bucket_reso > self.resolution or self.max_bucket_reso < self.resolution:
            raise ValueError(render(
                f"{setting('resolution', self.resolution)} must lie between {setting('min_bucket_reso', self.min_bucket_reso)} "
                f"and {setting('max_bucket_reso', self.max_bucket_reso)}; change one of them"
            ))
        return self

    # --- Derived values -------------------------------------------------------------------------
    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches one optimizer step consumes: accumulation times data-parallel GPUs."""
        return self.gradient_accumulation_steps * self.num_gpus

    @property
    def network_scale(self) -> float:
        return self.network_alpha / self.network_dim

    def resolved_work_dir(self) -> Path:
        if self.work_dir:
            return Path(self.work_dir).expanduser()
        return cache_root() / "work" / self.project_name

    def training_fields(self) -> dict[str, Any]:
        """The settings a state records: those a resume must match and those it continues under."""
        return {k: v for k, v in self.model_dump(mode="json").items() if RESUME_RULES.get(k, "match") != "free"}

    def fingerprint(self, dataset_fingerprint: str = "") -> str:
        """Stable hash of the settings a resume must match and of the dataset content: equal fingerprints
        mean a state can be continued (the "continue" settings may still differ)."""
        fields = {k: v for k, v in self.training_fields().items() if RESUME_RULES.get(k, "match") == "match"}
        payload = json.dumps({"config": fields, "dataset": dataset_fingerprint}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def project_name_problem(name: str) -> str | None:
    """Why `name` cannot name a project's files everywhere, or None when it can."""
    if len(name) > PROJECT_NAME_MAX:
        return f"is {len(name)} characters long, over the limit of {PROJECT_NAME_MAX}"
    if not name or not _PROJECT_NAME_CHARS.match(name[0]):
        return "does not start with a letter or digit"
    bad = next((c for c in name if not _PROJECT_NAME_CHARS.match("a" + c)), None)
    if bad is not None:
        return f"contains {bad!r}"
    if ".." in name:
        return "contains '..'"
    if name.endswith("."):  # Windows drops a trailing dot, so name. and name would be one folder
        return "ends in '.'"
    if name.lower().endswith(".safetensors"):
        return "ends in .safetensors, which is added to each LoRA file"
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:  # reserved on Windows with any extension
        return "is a reserved file name on Windows"
    return None


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


def canonical_choice(choices: tuple[str, ...], value: Any) -> Any:
    """The choice `value` names, ignoring case and surrounding blanks; anything else unchanged (to be refused)."""
    if isinstance(value, str):
        for choice in choices:
            if value.strip().lower() == choice.lower():
                return choice
    return value


def unwrap_optional(annotation: Any) -> Any:
    """X for `X | None`, else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def cache_root() -> Path:
    """Local (never durable) folder for downloads, extracted datasets and caches."""
    base = os.environ.get("ANIMA_LORA_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base).expanduser()
    return path if os.environ.get("ANIMA_LORA_CACHE") else path / "anima-lora-flow"


def cache_root_setting() -> str:
    """The environment variable that placed cache_root(), for messages saying what to change."""
    return next((name for name in ("ANIMA_LORA_CACHE", "XDG_CACHE_HOME") if os.environ.get(name)), "HOME")


def resume_rule(field: str, kept_by_state: frozenset[str] = frozenset()) -> ResumeRule:
    """RESUME_RULES[field], except that a backend cannot continue under the settings its own resume
    restores from the state (its `kept_by_state`, trainer/backend.py): a new value would be ignored."""
    rule = RESUME_RULES.get(field, "match")  # a field without a rule is the safe kind
    return "match" if rule == "continue" and field in kept_by_state else rule


def resume_differences(
    old: dict[str, Any], new: dict[str, Any], kept_by_state: frozenset[str] = frozenset()
) -> tuple[list[str], list[tuple[str, Any, Any]]]:
    """What differs between a state's recorded settings and this run's: (refusals as setting_change spells them,
    changes a resume continues under as (field, old, new)). A setting missing from either record (a state
    from an older version) is not compared. `trainer` must match, so the new run's backend decides what
    its state keeps."""
    refused, changed = [], []
    for key in sorted(set(old) & set(new)):
        if _same(old[key], new[key]):
            continue
        rule = resume_rule(key, kept_by_state)
        if rule == "match":
            refused.append(setting_change(key, old[key], new[key]))
        elif rule == "continue":
            changed.append((key, old[key], new[key]))
    return refused, changed


def _same(a: Any, b: Any) -> bool:
    # JSON gives lists where the config has tuples (betas), and ints where floats were typed (alpha 20).
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def setting_change(field: str, old: Any, new: Any) -> str:
    """A setting's change as the current audience spells the setting: "--network-dim 20 -> 8" on the CLI."""
    return render(f"{setting(field)} {_shown_value(old)} -> {_shown_value(new)}")


def change_note(field: str, old: Any, new: Any, step: int) -> str:
    """The warning for a setting a resumed run continues under, naming the step it applies from."""
    what = "the learning-rate schedule is re-planned" if field in _SCHEDULE_FIELDS else "it applies"
    return f"{setting_change(field, old, new)}: {what} from step {step}"


def _shown_value(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "(none)"
    return str(value)


def diff_training_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names and values of the training settings that differ, for a refusal to resume."""
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changed.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changed


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict of field values (validated by the caller).

    Every error names the file: the user may not connect a bad key with the --config flag.

    Raises:
        FileNotFoundError: no such file.
        UserInputError: not .toml/.json, unparsable, sections instead of top-level keys, or unknown keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(render(f"config file not found: {path}; check the {setting('config')} path"))
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise UserInputError(f"config file must end in .toml or .json: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows editors start UTF-8 files with a BOM
        if suffix == ".json":
            data = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
        else:
            import tomllib  # noqa: PLC0415

            data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text; save the file as UTF-8") from exc
    except _DuplicateKey as exc:
        raise UserInputError(f"{path}: {exc.args[0]} is set twice; keep one of them") from exc
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError both say where the syntax breaks
        key = _toml_overwritten_key(text, str(exc)) if suffix == ".toml" else None
        if key:
            raise UserInputError(f"{path}: {key} is set twice; keep one of them") from exc
        raise UserInputError(f"{path}: not valid {suffix[1:].upper()}: {exc}; fix that line") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: the file must hold settings as keys at the top level, such as network_dim = 8")
    tables = [key for key, value in data.items() if isinstance(value, dict)]
    if tables:  # no setting takes a table: a [section] header means the keys are nested one level too deep
        shown = f"[{tables[0]}]" if suffix == ".toml" else repr(tables[0])
        raise UserInputError(
            f"{path}: {shown} is a table; the file must hold settings at the top level (network_dim = 8), "
            "without table headers"
        )
    unknown = [key for key in data if key not in TrainingConfig.model_fields]
    if unknown:
        hints = [_unknown_key(key) for key in unknown]
        if any(hint is None for hint in hints):
            names = ", ".join(repr(key) for key, hint in zip(unknown, hints) if hint is None)
            hints = [hint for hint in hints if hint] + [
                f"unknown setting{'s' if ',' in names else ''} {names}; the keys are the flags of `anima-lora train --help` with underscores, "
                "as in network_dim"
            ]
        raise UserInputError(f"{path}: {'; '.join(hints)}")
    return data


class _DuplicateKey(ValueError):
    """A JSON object names one key twice (json keeps the last silently)."""


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _toml_overwritten_key(text: str, error: str) -> str | None:
    """The key of a TOML "Cannot overwrite a value (at line N, ...)" error: tomllib does not name it."""
    found = re.match(r"Cannot overwrite a value \(at line (\d+),", error)
    if not found:
        return None
    lines = text.splitlines()
    line_no = int(found.group(1))
    if not 1 <= line_no <= len(lines) or "=" not in lines[line_no - 1]:
        return None
    return lines[line_no - 1].split("=", 1)[0].strip() or None


def _unknown_key(key: str) -> str | None:
    """The likely intended setting for a key that is none, or None when nothing comes close."""
    fields = list(TrainingConfig.model_fields)
    underscored = key.replace("-", "_")
    if underscored in fields:
        return f"unknown setting {key!r}; keys use underscores: {underscored}"
    close = difflib.get_close_matches(underscored, fields, n=1)
    return f"unknown setting {key!r} (did you mean {close[0]!r}?)" if close else None
