"""Talk to the Hub through huggingface_hub: list a repo's files, download one, and name the fix on failure."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects

from ..errors import setting
from .errors import ModelDownloadError, ModelInputError, ModelNetworkError

T = TypeVar("T")

# Errors worth another attempt: httpx/httpx2 and requests spell them alike, so match by class name.
_TRANSIENT_NAMES = {
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "TimeoutException",
    "ReadError",
    "RemoteProtocolError",
    "ConnectionError",
    "ChunkedEncodingError",
    "Timeout",
}
_CONNECT_NAMES = {"ConnectError", "ConnectTimeout", "ConnectionError"}


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit. `etag` names the blob in the HF cache; `sha256` is the LFS hash if any."""

    filename: str
    size: int
    etag: str
    sha256: str | None = None


@dataclass
class Manifest:
    """A repo's file list at one commit, kept on disk so a second run needs no network."""

    repo_id: str
    revision: str
    commit: str
    files: list[RemoteFile] = field(default_factory=list)

    def select(self, allow: list[str] | None, ignore: list[str] | None) -> list[RemoteFile]:
        return list(filter_repo_objects(self.files, allow_patterns=allow, ignore_patterns=ignore, key=lambda f: f.filename))

    def get(self, filename: str) -> RemoteFile | None:
        return next((f for f in self.files if f.filename == filename), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        return cls(data["repo_id"], data["revision"], data["commit"], [RemoteFile(**f) for f in data["files"]])


@dataclass
class Hub:
    """Where files come from (endpoint, token) and go (HF cache, our state folder)."""

    cache_dir: Path
    state_dir: Path
    endpoint: str | None = None
    token: str | None = None

    @property
    def url(self) -> str:
        return (self.endpoint or constants.ENDPOINT).rstrip("/")

    def manifest_path(self, repo_id: str, revision: str) -> Path:
        return self.state_dir / "manifests" / f"{repo_id.replace('/', '--')}@{revision}.json"

    def cached_path(self, manifest: Manifest, file: RemoteFile) -> Path | None:
        """The file's snapshot path in the HF cache, or None (no network)."""
        found = try_to_load_from_cache(manifest.repo_id, file.filename, cache_dir=self.cache_dir, revision=manifest.commit)
        return Path(found) if isinstance(found, str) else None


def load_manifest(hub: Hub, repo_id: str, revision: str) -> Manifest | None:
    """The manifest saved by an earlier run, or None."""
    path = hub.manifest_path(repo_id, revision)
    try:
        return Manifest.from_json(path.read_text())
    except (OSError, ValueError, KeyError):
        return None


def save_manifest(hub: Hub, manifest: Manifest) -> None:
    path = hub.manifest_path(manifest.repo_id, manifest.revision)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.to_json())


def fetch_manifest(hub: Hub, repo_id: str, revision: str) -> Manifest:
    """Ask the Hub for the repo's commit and every file's size and hashes (one API call), and save it.

    Raises:
        ModelInputError: no such repo/revision, gated, or the Hub cannot be reached at all.
        ModelNetworkError: the Hub kept failing with 5xx or timeouts.
    """
    api = HfApi(endpoint=hub.url, token=hub.token)

    def call():
        return api.model_info(repo_id, revision=revision, files_metadata=True)

    info = translated(hub, f"listing {repo_id}", call, repo_id=repo_id, first_contact=True)
    files = [
        RemoteFile(
            filename=s.rfilename,
            size=s.lfs.size if s.lfs else (s.size or 0),
            etag=s.lfs.sha256 if s.lfs else (s.blob_id or ""),
            sha256=s.lfs.sha256 if s.lfs else None,
        )
        for s in info.siblings or []
    ]
    manifest = Manifest(repo_id, revision, info.sha, files)
    save_manifest(hub, manifest)
    return manifest


def download(hub: Hub, manifest: Manifest, file: RemoteFile, *, force: bool = False) -> Path:
    """Download one file into the HF cache at the manifest's commit (resumes dropped connections, shows a bar)."""

    def call():
        return hf_hub_download(
            manifest.repo_id,
            file.filename,
            revision=manifest.commit,
            cache_dir=hub.cache_dir,
            endpoint=hub.url,
            token=hub.token,
            force_download=force,
        )

    return Path(translated(hub, f"downloading {manifest.repo_id}/{file.filename}", call, repo_id=manifest.repo_id, retried=True))


def remove_cached(path: Path) -> None:
    """Delete a cached file: the blob a snapshot link points at, then the link."""
    real = path.resolve()
    real.unlink(missing_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink(missing_ok=True)


def translated(hub: Hub, what: str, call: Callable[[], T], *, repo_id: str, first_contact: bool = False,
               retried: bool = False) -> T:
    """Run `call` once; a failure becomes one sentence that names the fix.

    One retry layer per operation. huggingface_hub retries a file download itself (the metadata request
    with backoff on 408/429/5xx and network errors, the body resumed with a Range request after a cut),
    so a download passes `retried=True` and a failure huggingface_hub already retried is final: Prefect's
    task retries skip it (tasks/retry.py). The listing (HfApi.model_info) has no retries of its own: its network errors are
    left to the models task's retries. `first_contact` marks the listing: if it cannot connect at all,
    the machine is offline, which the user fixes (internet switch, proxy), so no layer retries that.
    """
    try:
        return call()
    except ModelDownloadError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; unknown errors are re-raised unchanged
        error = classify(exc, hub=hub, what=what, repo_id=repo_id, first_contact=first_contact)
        if error is None:
            raise
        error.retried = retried and _retried_by_huggingface_hub(exc)
        raise error from exc


def _retried_by_huggingface_hub(exc: BaseException) -> bool:
    """Whether hf_hub_download already retried this failure of a download.

    It retries the file's metadata request with backoff on 408/429/5xx and network errors (what still
    fails arrives wrapped in LocalEntryNotFoundError) and resumes the body after network errors; a 5xx
    answer to the body's own request and a body cut short without an error are not retried there, so
    those stay for the task's retries.
    """
    if isinstance(exc, LocalEntryNotFoundError):
        return True
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code in (408, 429)
    return bool(_chain_names(exc) & _TRANSIENT_NAMES) and not _consistency_error(exc)


def classify(
    exc: BaseException, *, hub: Hub, what: str, repo_id: str, first_contact: bool
) -> ModelDownloadError | None:
    """The error to raise instead of `exc`; None for errors that are bugs, not download problems."""
    page = f"{hub.url}/{repo_id}"
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None and not constants.is_offline_mode():
        # hf_hub_download wraps the real HEAD failure (HTTP status, connection) when the file is not cached.
        return classify(exc.__cause__, hub=hub, what=what, repo_id=repo_id, first_contact=first_contact)
    if isinstance(exc, GatedRepoError):
        return ModelInputError(
            f"{repo_id} is gated: accept its terms at {page} and set HF_TOKEN to a token of that account"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelInputError(
            f"{repo_id} was not found at {hub.url} (or it is private): check the name, or set HF_TOKEN to a token with access"
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelInputError(f"{repo_id} has no such revision: check the revision name at {page}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return ModelInputError(
            f"{what}: the file is not in {repo_id} (HTTP 404); it may have been renamed: pick another "
            f"{setting('base_model')} or update anima-lora-flow",
            field="base_model",
        )
    if _offline_mode(exc):
        return ModelInputError(
            f"{what}: HF_HUB_OFFLINE is set and the file is not in the local cache; unset HF_HUB_OFFLINE "
            "or train from a local Diffusers-format copy with `anima-lora train --models-dir DIR`"
        )
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return ModelInputError(f"{what}: HTTP {status}, access denied; set HF_TOKEN to a token that can read {page}")
        if status in (408, 429) or status >= 500:
            return ModelNetworkError(f"{what}: the Hub answered HTTP {status}; wait a minute and run again")
    names = _chain_names(exc)
    if names & _CONNECT_NAMES and first_contact:
        return ModelInputError(
            f"cannot reach {hub.url}: check the internet connection (on Kaggle switch Internet on in the "
            "notebook settings), or train from a local Diffusers-format copy with `anima-lora train --models-dir DIR`"
        )
    if names & _TRANSIENT_NAMES or isinstance(exc, LocalEntryNotFoundError) or _consistency_error(exc):
        return ModelNetworkError(
            f"{what} failed ({type(exc).__name__}): the connection dropped; run again, finished files are kept"
        )
    return None


def _chain_names(exc: BaseException) -> set[str]:
    names: set[str] = set()
    seen: BaseException | None = exc
    while seen is not None and len(names) < 50:
        names.update(cls.__name__ for cls in type(seen).__mro__)
        seen = seen.__cause__ or seen.__context__
    return names


def _offline_mode(exc: BaseException) -> bool:
    if isinstance(exc, OfflineModeIsEnabled):
        return True
    return isinstance(exc, LocalEntryNotFoundError) and constants.is_offline_mode()


def _consistency_error(exc: BaseException) -> bool:
    # huggingface_hub raises a bare OSError when fewer bytes arrived than announced.
    return type(exc) is OSError and "Consistency check failed" in str(exc)
