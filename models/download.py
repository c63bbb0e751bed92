"""`ensure_models`: make the Anima files for one base model and backend present and verified, the cheapest way."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from huggingface_hub import constants

from ..config import cache_root
from ..errors import setting

from ..core import known_models
from ..core.backends import NAMES, TrainerBackend, model_layout
from .convert import convert_single_file_dit
from .durable import DurableCache
from .errors import ModelDownloadError, ModelInputError, ModelNetworkError
from .hub import Hub, Manifest, RemoteFile, download, fetch_manifest, load_manifest, remove_cached, save_manifest
from .token import hf_token
from .verify import HashRecord, check_file, ensure_disk_space

__all__ = [
    "ModelDownloadError",
    "ModelInputError",
    "ModelNetworkError",
    "ModelPaths",
    "ensure_models",
    "make_hub",
    "ready_models",
    "validate_models_dir",
]

log = logging.getLogger("anima_lora_flow.models")
Backend = TrainerBackend  # a backend name: core/backends.py says which model layout it reads


@dataclass(frozen=True)
class ModelPaths:
    """Local model files: a Diffusers folder for the native trainer, single files for sd-scripts."""

    diffusers_dir: Path | None = None
    dit: Path | None = None
    text_encoder: Path | None = None
    vae: Path | None = None

    def all_exist(self) -> bool:
        return all(p.exists() for p in asdict(self).values() if p is not None)


@dataclass(frozen=True)
class Wanted:
    """Which files of one repo a run needs (huggingface_hub glob patterns)."""

    repo_id: str
    allow: list[str]
    ignore: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)  # exact files or folders ("vae/") that must exist


def make_hub(cache_dir: Path | None = None, endpoint: str | None = None, *, online: bool = True) -> Hub:
    """Default: the user's HF cache plus our state under cache_root(); with cache_dir, both live under it.

    `online=False` skips the token look-up (Colab may ask the user to grant secret access) for local-only checks.
    """
    token = hf_token() if online else None
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
        return Hub(cache_dir=cache_dir / "hub", state_dir=cache_dir / "anima", endpoint=endpoint, token=token)
    return Hub(cache_dir=Path(constants.HF_HUB_CACHE), state_dir=cache_root() / "models", endpoint=endpoint, token=token)


def plan(base_model: str, backend: Backend) -> list[Wanted]:
    """The repos and patterns a base model needs for a backend."""
    spec = known_models.base_model(base_model)
    if model_layout(backend) == "single-files":
        names = [f.filename for f in known_models.single_files(base_model)]
        return [Wanted(known_models.SINGLE_FILE_REPO, names, required=names)]
    allow, ignore = known_models.diffusers_patterns(base_model)
    folders = [f"{sub}/" for sub in known_models.DIFFUSERS_SUBFOLDERS]
    wanted = [Wanted(known_models.DIFFUSERS_REPO, allow, ignore, required=folders)]
    if not spec.has_diffusers:
        wanted.append(Wanted(known_models.SINGLE_FILE_REPO, [spec.dit.filename], required=[spec.dit.filename]))
    return wanted


def ensure_models(
    base_model: str,
    *,
    backend: Backend,
    cache_dir: Path | None = None,
    durable_cache: str | None = None,
    endpoint: str | None = None,
) -> ModelPaths:
    """Download (or copy from `durable_cache`) and verify the files `backend` needs for `base_model`.

    Raises:
        ModelInputError: unknown base model/backend, missing repo or file, gated repo, no disk space,
            no internet, or a file that stays damaged after a second download.
        ModelNetworkError: the network or the Hub kept failing (worth retrying later).
    """
    _check_choice(base_model, backend)
    hub = make_hub(cache_dir, endpoint)
    durable = DurableCache(durable_cache) if durable_cache else None
    record = HashRecord(hub.state_dir / "hashes.json")
    selections = [(_manifest(hub, w, record, durable), w) for w in plan(base_model, backend)]
    chosen = [(m, _select(m, w)) for m, w in selections]
    for manifest, files in chosen:  # a changed pin stops the run before any byte is downloaded
        for file in files:
            expected_sha256(manifest.repo_id, file)

    pending = [(m, f) for m, files in chosen for f in files if not _is_ok(hub, m, f, record)]
    needed = sum(f.size for _, f in pending) + _conversion_bytes(hub, base_model, backend, chosen)
    ensure_disk_space(hub.cache_dir, needed)
    if pending:
        log.info("fetching %d file(s), %.2f GB", len(pending), sum(f.size for _, f in pending) / 1e9)
    local: dict[tuple[str, str], Path] = {}
    for manifest, files in chosen:
        for file in files:
            local[(manifest.repo_id, file.filename)] = fetch_verified(hub, manifest, file, record, durable)
    if durable is not None:
        _save_durable(durable, chosen, local)
    paths = _assemble(hub, base_model, backend, chosen, local)
    _write_ready(hub, base_model, backend, paths)
    return paths


def fetch_verified(
    hub: Hub, manifest: Manifest, file: RemoteFile, record: HashRecord, durable: DurableCache | None = None
) -> Path:
    """Return the cached file after checking size and SHA-256; a damaged copy is deleted and fetched once more."""
    sha = expected_sha256(manifest.repo_id, file)
    path = hub.cached_path(manifest, file)
    if path is not None:
        if (reason := _discard_if_damaged(path, file, sha, record)) is None:
            return path
        log.warning("cached %s is damaged (%s); fetching it again", file.filename, reason)
    path = durable.copy_into_cache(hub, manifest, file) if durable is not None else None
    if path is not None and (reason := _discard_if_damaged(path, file, sha, record)) is not None:
        log.warning("the durable copy of %s is damaged (%s); downloading instead", file.filename, reason)
        path = None
    if path is None:
        path = download(hub, manifest, file)
    if (reason := _discard_if_damaged(path, file, sha, record)) is None:
        return path
    log.warning("downloaded %s is damaged (%s); deleting it and downloading again", file.filename, reason)
    path = download(hub, manifest, file, force=True)
    if (reason := _discard_if_damaged(path, file, sha, record)) is not None:
        raise ModelInputError(
            f"{manifest.repo_id}/{file.filename} was damaged after two downloads ({reason}); check the disk under "
            f"{hub.cache_dir} and run again, and report it if it keeps happening"
        )
    return path


def _discard_if_damaged(path: Path, file: RemoteFile, sha: str | None, record: HashRecord) -> str | None:
    """Why `path` is not the file (it is deleted then, and its hash forgotten), or None when it is."""
    reason = check_file(path, file.size, sha, record)
    if reason is not None:
        _discard(path, record)
    return reason


def expected_sha256(repo_id: str, file: RemoteFile) -> str | None:
    """The pinned hash when this tool knows the file, else the Hub's LFS hash (None for small git files).

    Raises:
        ModelInputError: the Hub now serves different content than the pinned hash (do not download 4 GB for nothing).
    """
    known = known_models.known_file(repo_id, file.filename)
    if known is None or known.sha256 is None:
        return file.sha256
    if file.sha256 and file.sha256 != known.sha256:
        raise ModelInputError(
            f"{repo_id}/{file.filename} changed on the Hub (SHA-256 {file.sha256[:12]}…, anima-lora-flow expects "
            f"{known.sha256[:12]}…); update anima-lora-flow or pick another {setting('base_model')}",
            field="base_model",
        )
    return known.sha256


def validate_models_dir(models_dir: str | Path) -> ModelPaths:
    """Use a local Diffusers-format folder as is, after checking it has every subfolder the trainer loads.

    Raises:
        ModelInputError: the folder or some subfolders are missing.
    """
    root = Path(models_dir).expanduser()
    if not root.is_dir():
        raise ModelInputError(f"{setting('models_dir', root)} does not exist; point it at a Diffusers-format Anima folder",
                              field="models_dir")
    missing = [s for s in known_models.DIFFUSERS_SUBFOLDERS if not (root / s).is_dir()]
    if missing:
        raise ModelInputError(
            f"{setting('models_dir', root)} lacks {', '.join(m + '/' for m in missing)}; point it at a Diffusers-format "
            f"Anima folder (like {known_models.DIFFUSERS_REPO}) or leave out {setting('models_dir')} to download one",
            field="models_dir",
        )
    return ModelPaths(diffusers_dir=root)


def ready_models(base_model: str, backend: Backend, cache_dir: Path | None = None) -> ModelPaths | None:
    """The paths of the last successful ensure_models call for these choices, if they still exist (no network)."""
    path = _ready_path(make_hub(cache_dir, online=False), base_model, backend)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    paths = ModelPaths(**{k: Path(v) if v else None for k, v in data.items()})
    return paths if paths.all_exist() else None


# --- helpers -------------------------------------------------------------------------------------


def _check_choice(base_model: str, backend: str) -> None:
    try:
        known_models.base_model(base_model)
    except KeyError as exc:
        raise ModelInputError(exc.args[0]) from None
    if backend not in NAMES:
        raise ModelInputError(f"unknown backend {backend!r}; choose {' or '.join(NAMES)}")


def _manifest(hub: Hub, wanted: Wanted, record: HashRecord, durable: DurableCache | None) -> Manifest:
    """A saved manifest whose files are all present (no network), else the Hub's, else any saved one."""
    saved = load_manifest(hub, wanted.repo_id, known_models.REVISION)
    if saved is not None and all(_is_ok(hub, saved, f, record) for f in _select(saved, wanted)):
        return saved
    try:
        return fetch_manifest(hub, wanted.repo_id, known_models.REVISION)
    except ModelDownloadError as exc:
        fallback = saved or (durable.load_manifest(wanted.repo_id, known_models.REVISION) if durable else None)
        if fallback is None:
            raise
        log.warning("%s; using the file list saved earlier", exc)
        save_manifest(hub, fallback)
        return fallback


def _select(manifest: Manifest, wanted: Wanted) -> list[RemoteFile]:
    files = manifest.select(wanted.allow, wanted.ignore)
    missing = [p for p in wanted.required if not any(f.filename.startswith(p) for f in manifest.files)]
    if missing:
        raise ModelInputError(
            f"{', '.join(missing)} is not in {wanted.repo_id} (HTTP 404); it may have been renamed: pick another "
            f"{setting('base_model')} or update anima-lora-flow",
            field="base_model",
        )
    return files


def _is_ok(hub: Hub, manifest: Manifest, file: RemoteFile, record: HashRecord) -> bool:
    path = hub.cached_path(manifest, file)
    return path is not None and check_file(path, file.size, expected_sha256(manifest.repo_id, file), record) is None


def _discard(path: Path, record: HashRecord) -> None:
    record.forget(path)
    remove_cached(path)


def _snapshot_root(path: Path, filename: str) -> Path:
    return path.parents[len(Path(filename).parts) - 1]


def _converted_dir(hub: Hub, base_model: str, dit: RemoteFile) -> Path:
    return hub.state_dir / "diffusers" / f"{base_model}-{(dit.sha256 or dit.etag)[:12]}"


def _conversion_bytes(hub: Hub, base_model: str, backend: str, chosen) -> int:
    spec = known_models.base_model(base_model)
    if model_layout(backend) != "diffusers" or spec.has_diffusers:
        return 0
    dit = next(f for m, files in chosen for f in files if f.filename == spec.dit.filename)
    return 0 if (_converted_dir(hub, base_model, dit) / ".complete").exists() else dit.size


def _assemble(hub: Hub, base_model: str, backend: str, chosen, local: dict[tuple[str, str], Path]) -> ModelPaths:
    spec = known_models.base_model(base_model)
    single = known_models.SINGLE_FILE_REPO
    if model_layout(backend) == "single-files":
        return ModelPaths(
            dit=local[(single, spec.dit.filename)],
            text_encoder=local[(single, known_models.TEXT_ENCODER.filename)],
            vae=local[(single, known_models.VAE.filename)],
        )
    key, path = next((k, p) for k, p in local.items() if k[0] == known_models.DIFFUSERS_REPO)
    reference = _snapshot_root(path, key[1])
    if spec.has_diffusers:
        return ModelPaths(diffusers_dir=reference)
    dit_file = next(f for m, files in chosen for f in files if f.filename == spec.dit.filename)
    dit = local[(single, spec.dit.filename)]
    dest = _converted_dir(hub, base_model, dit_file)
    if not (dest / ".complete").exists():
        log.info("converting %s to the Diffusers layout in %s", dit.name, dest)
        convert_single_file_dit(dit, dest, reference)
    return ModelPaths(diffusers_dir=dest, dit=dit)


def _save_durable(durable: DurableCache, chosen, local: dict[tuple[str, str], Path]) -> None:
    """Mirror the verified files; a full or dropped durable store only costs the next session a download."""
    try:
        for manifest, files in chosen:
            for file in files:
                durable.store(file, local[(manifest.repo_id, file.filename)])
            durable.store_manifest(manifest)
    except OSError as exc:
        log.warning("could not save the models to %s (%s); the next session will download them", durable.location.url, exc)


def _ready_path(hub: Hub, base_model: str, backend: str) -> Path:
    return hub.state_dir / "ready" / f"{base_model}@{backend}.json"


def _write_ready(hub: Hub, base_model: str, backend: str, paths: ModelPaths) -> None:
    path = _ready_path(hub, base_model, backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: str(v) if v else None for k, v in asdict(paths).items()}, indent=1))
