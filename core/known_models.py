"""The Anima files this tool knows: repos, paths, sizes and SHA-256 pins (seed-behaviour.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

SINGLE_FILE_REPO = "circlestone-labs/Anima"
DIFFUSERS_REPO = "circlestone-labs/Anima-Base-v1.0-Diffusers"
REVISION = "main"

# Subfolders of the Diffusers-format repo that the native trainer loads with from_pretrained(subfolder=...).
DIFFUSERS_SUBFOLDERS = (
    "transformer",
    "text_conditioner",
    "text_encoder",
    "tokenizer",
    "t5_tokenizer",
    "vae",
    "scheduler",
)
DIFFUSERS_INDEX_FILES = ("model_index.json", "modular_model_index.json")
# The two modules that a single-file DiT replaces; only their configs are needed from the Diffusers repo.
CONVERTED_SUBFOLDERS = ("transformer", "text_conditioner")
_WEIGHT_SUFFIXES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


@dataclass(frozen=True)
class KnownFile:
    """One file in a Hub repo. `size` is exact when `size_exact`, else the rounded size from the Hub page."""

    repo_id: str
    filename: str
    size: int
    sha256: str | None = None
    size_exact: bool = False


@dataclass(frozen=True)
class BaseModel:
    """A base-model choice: its DiT single file and whether the Diffusers repo holds it as-is."""

    name: str
    dit: KnownFile
    has_diffusers: bool


def _dit(filename: str, size: int, sha256: str | None = None, size_exact: bool = False) -> KnownFile:
    return KnownFile(SINGLE_FILE_REPO, f"split_files/diffusion_models/{filename}", size, sha256, size_exact)


BASE_MODELS: dict[str, BaseModel] = {
    "anima-base-v1.0": BaseModel(
        "anima-base-v1.0",
        _dit("anima-base-v1.0.safetensors", 4_180_000_000, "bd43b7cffe1ed1153d9c41e7beb2f18cb1273eafbaa3af3edd6a173dc90a006e"),
        has_diffusers=True,
    ),
    "anima-preview3-base": BaseModel(
        "anima-preview3-base", _dit("anima-preview3-base.safetensors", 4_180_000_000), has_diffusers=False
    ),
    "anima-preview": BaseModel("anima-preview", _dit("anima-preview.safetensors", 4_180_000_000), has_diffusers=False),
    # Only the first and last hash digits are published (a21ff680…2f57), so the Hub's LFS hash is used instead.
    "anima-preview2": BaseModel(
        "anima-preview2", _dit("anima-preview2.safetensors", 4_182_218_360, size_exact=True), has_diffusers=False
    ),
}

TEXT_ENCODER = KnownFile(
    SINGLE_FILE_REPO,
    "split_files/text_encoders/qwen_3_06b_base.safetensors",
    1_192_135_096,
    "cd2a512003e2f9f3cd3c32a9c3573f820bb28c940f73c57b1ddaa983d9223eba",
    size_exact=True,
)
VAE = KnownFile(
    SINGLE_FILE_REPO,
    "split_files/vae/qwen_image_vae.safetensors",
    254_000_000,
    "a70580f0213e67967ee9c95f05bb400e8fb08307e017a924bf3441223e023d1f",
)
# Rough size of the Diffusers repo, for a disk estimate before the Hub has been asked.
DIFFUSERS_APPROX_BYTES = 5_600_000_000


def base_model(name: str) -> BaseModel:
    """The entry for a base-model name.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return BASE_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown base model {name!r}; choose one of {', '.join(BASE_MODELS)}") from None


def single_files(name: str) -> list[KnownFile]:
    """The three single files sd-scripts loads for a base model: DiT, text encoder, VAE."""
    return [base_model(name).dit, TEXT_ENCODER, VAE]


def known_file(repo_id: str, filename: str) -> KnownFile | None:
    """The pinned entry for a repo file, if this tool knows it."""
    for known in [*(m.dit for m in BASE_MODELS.values()), TEXT_ENCODER, VAE]:
        if known.repo_id == repo_id and known.filename == filename:
            return known
    return None


def diffusers_patterns(name: str) -> tuple[list[str], list[str]]:
    """(allow, ignore) patterns for the Diffusers repo: all needed subfolders, minus the weights a single file replaces."""
    allow = [f"{sub}/*" for sub in DIFFUSERS_SUBFOLDERS] + list(DIFFUSERS_INDEX_FILES)
    ignore: list[str] = []
    if not base_model(name).has_diffusers:
        ignore = [f"{sub}/{suffix}" for sub in CONVERTED_SUBFOLDERS for suffix in _WEIGHT_SUFFIXES]
    return allow, ignore
