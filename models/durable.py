"""A durable copy of the model files (Drive, a bucket) so a new session copies instead of downloading.

Blobs are stored by content hash (`blobs/<etag>`) with a `.ok` marker written last, since object stores
have no atomic rename; manifests sit beside them so a new session can work even when the Hub is down.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

from ..storage.location import Location, resolve_location

from .hub import Hub, Manifest, RemoteFile

log = logging.getLogger("anima_lora_flow.models")


class DurableCache:
    """Content-addressed model blobs under a location the user chose (`durable_cache` / `models_cache`)."""

    def __init__(self, url: str):
        self.location: Location = resolve_location(url)

    def _blob(self, file: RemoteFile) -> str:
        return self.location.join("blobs", file.etag)

    def has(self, file: RemoteFile) -> bool:
        fs = self.location.fs
        marker = self._blob(file) + ".ok"
        try:
            return fs.exists(marker) and fs.size(self._blob(file)) == file.size
        except OSError:
            return False

    def copy_into_cache(self, hub: Hub, manifest: Manifest, file: RemoteFile) -> Path | None:
        """Copy the blob into the HF cache as if hf_hub_download had fetched it; None when absent or unreadable."""
        if not self.has(file):
            return None
        storage = hub.cache_dir / repo_folder_name(repo_id=manifest.repo_id, repo_type="model")
        blob = storage / "blobs" / file.etag
        tmp = blob.with_name(f"{file.etag}.{uuid.uuid4().hex[:8]}.incomplete")
        blob.parent.mkdir(parents=True, exist_ok=True)
        log.info("copying %s from %s", file.filename, self.location.url)
        try:
            self.location.fs.get_file(self._blob(file), str(tmp))
            os.replace(tmp, blob)
        except OSError as exc:
            log.warning("could not copy %s from %s (%s); downloading instead", file.filename, self.location.url, exc)
            tmp.unlink(missing_ok=True)
            return None
        pointer = storage / "snapshots" / manifest.commit / file.filename
        _link(blob, pointer)
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / manifest.revision).write_text(manifest.commit)
        return pointer

    def store(self, file: RemoteFile, local: Path) -> None:
        """Upload a verified local file unless the durable copy already exists."""
        if self.has(file):
            return
        fs = self.location.fs
        target = self._blob(file)
        log.info("saving %s to %s", file.filename, self.location.url)
        fs.makedirs(self.location.join("blobs"), exist_ok=True)
        fs.put_file(str(local.resolve()), target)
        fs.pipe_file(target + ".ok", str(file.size).encode())

    def store_manifest(self, manifest: Manifest) -> None:
        fs = self.location.fs
        fs.makedirs(self.location.join("manifests"), exist_ok=True)
        fs.pipe_file(self._manifest(manifest.repo_id, manifest.revision), manifest.to_json().encode())

    def load_manifest(self, repo_id: str, revision: str) -> Manifest | None:
        try:
            return Manifest.from_json(self.location.fs.cat_file(self._manifest(repo_id, revision)).decode())
        except (OSError, ValueError, KeyError):
            return None

    def _manifest(self, repo_id: str, revision: str) -> str:
        return self.location.join("manifests", f"{repo_id.replace('/', '--')}@{revision}.json")


def _link(blob: Path, pointer: Path) -> None:
    """Point the snapshot path at the blob the way the HF cache does (relative symlink, else a copy)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks (Windows without developer mode): the HF cache copies too
        shutil.copyfile(blob, pointer)
