"""What is on disk for a base model and backend: for `models list` and `models verify` (no network)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core import known_models
from .download import Backend, expected_sha256, make_hub, plan
from .durable import DurableCache
from .errors import ModelInputError
from .hub import load_manifest
from .verify import HashRecord, check_file


@dataclass(frozen=True)
class FileStatus:
    """One needed file. `state`: verified, present (size right, hash not checked), damaged, missing."""

    repo_id: str
    filename: str
    size: int | None
    sha256: str | None
    state: str
    durable: bool | None = None  # in the durable cache (None: no durable cache given)


def inspect_models(
    base_model: str,
    backend: Backend,
    cache_dir: Path | None = None,
    *,
    check_hashes: bool = False,
    durable_cache: str | None = None,
) -> list[FileStatus]:
    """Status of every file `ensure_models` would fetch; hashes only when `check_hashes` (slow for 5 GB)."""
    hub = make_hub(cache_dir, online=False)
    record = HashRecord(hub.state_dir / "hashes.json")
    durable = DurableCache(durable_cache) if durable_cache else None
    rows: list[FileStatus] = []
    for wanted in plan(base_model, backend):
        manifest = load_manifest(hub, wanted.repo_id, known_models.REVISION)
        if manifest is None:  # never downloaded: show what known_models knows
            rows += _unlisted(wanted.repo_id, wanted.required)
            continue
        for file in manifest.select(wanted.allow, wanted.ignore):
            try:
                sha = expected_sha256(manifest.repo_id, file)
            except ModelInputError:
                sha = file.sha256
            path = hub.cached_path(manifest, file)
            if path is None:
                state = "missing"
            elif check_hashes or sha is None:
                state = "damaged" if check_file(path, file.size, sha, record) else "verified"
            elif path.stat().st_size != file.size:
                state = "damaged"
            else:
                state = "verified" if record.known(path) == sha else "present"
            in_durable = durable.has(file) if durable else None
            rows.append(FileStatus(manifest.repo_id, file.filename, file.size, sha, state, in_durable))
    return rows


def _unlisted(repo_id: str, required: list[str]) -> list[FileStatus]:
    if repo_id == known_models.DIFFUSERS_REPO:  # its file list comes from the Hub on the first download
        return [FileStatus(repo_id, " ".join(required), known_models.DIFFUSERS_APPROX_BYTES, None, "missing")]
    rows = []
    for name in required:
        known = known_models.known_file(repo_id, name)
        rows.append(FileStatus(repo_id, name, known.size if known else None, known.sha256 if known else None, "missing"))
    return rows
