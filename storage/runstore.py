"""The run store under <storage>/<project>/: checkpoints, resumable states, configs, logs, history.

Every write is published whole. On local disk a file is written under a temporary name and renamed
into place once its size checks out; on an object store it is put once at its final name (an object
appears only when its upload completes; fsspec's `mv` there is a copy and a delete). A state counts only
once its manifest (sha256 of each file) exists, and `state/LATEST` is written last. Readers ignore
temporary names and states without a manifest.

Layout:
    configs/<run-id>/...            config.json, training.toml, dataset.toml
    checkpoints/<project>-<epoch:06d>.safetensors, <project>.safetensors
    state/<step:09d>/...            + manifest.json (step, epoch = epochs finished, fingerprint, files with
                                    sha256; from the native trainer also step_in_epoch, epochs, total_steps)
    state/LATEST                    the step of the newest published state
    archive/<folder>-<time>/        what --restart moved aside (states, checkpoints); never deleted
    logs/<run-id>.log, samples/, plan.json, runs.jsonl
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from ..core.hashing import sha256_file
from ..core.lora_files import epoch_of, kohya_name, lora_file_name
from .location import Location

PART_MARK = ".part-"
MANIFEST = "manifest.json"
LATEST = "LATEST"
ARCHIVE = "archive"


@dataclass(frozen=True)
class PublishedFile:
    path: str
    size: int
    sha256: str


@dataclass
class StateInfo:
    """A published training state: its step, its manifest, and where it lives."""

    step: int
    path: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("fingerprint")

    @property
    def epoch(self) -> int | None:
        """Epochs finished when the state was saved (0-based index of the epoch in progress)."""
        return self.manifest.get("epoch")

    @property
    def total_steps(self) -> int | None:
        return self.manifest.get("total_steps")


class StateVerificationError(OSError):
    """A published state is incomplete or does not match its manifest."""


@dataclass(frozen=True)
class StoreRef:
    """A run store the mount stage resolved and checked, as plain data that a run's later stages take.

    Opening it mounts nothing, creates nothing and asks the store nothing: those checks ran once, at the
    mount. `filesystem` is fsspec's own JSON description of the filesystem (its class and the options
    parsed from the storage URL, which the flow's parameters hold already).
    """

    url: str
    root: str
    filesystem: str
    project: str

    def open(self) -> RunStore:
        fs = fsspec.AbstractFileSystem.from_json(self.filesystem)  # fsspec's instance cache: the same object again
        return RunStore(Location(fs, self.root, self.url), self.project)


class RunStore:
    """One project's folder in durable storage."""

    def __init__(self, location: Location, project: str):
        self.location = location
        self.fs = location.fs
        self.project = project
        self.root = location.join(project)

    def ref(self) -> StoreRef:
        """This store as plain data, to pass to the stages after the mount."""
        return StoreRef(self.location.url, self.location.root, self.fs.to_json(), self.project)

    # --- paths ------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    def state_dir(self, step: int) -> str:
        return self.path("state", f"{step:09d}")

    def checkpoint_name(self, epoch: int | None = None) -> str:
        return lora_file_name(self.project, epoch)

    # --- atomic writes ------------------------------------------------------------------------
    def publish_file(self, local_path: str | Path, rel_dest: str) -> PublishedFile:
        """Upload a local file so that `rel_dest` appears only when complete and size-checked."""
        local_path = Path(local_path)
        size, digest = local_path.stat().st_size, sha256_file(local_path)
        dest = self._publish(self.path(rel_dest), size, lambda target: self.fs.put_file(str(local_path), target))
        return PublishedFile(dest, size, digest)

    def write_bytes(self, rel_dest: str, data: bytes) -> PublishedFile:
        dest = self._publish(self.path(rel_dest), len(data), lambda target: self.fs.pipe_file(target, data))
        return PublishedFile(dest, len(data), hashlib.sha256(data).hexdigest())

    def write_json(self, rel_dest: str, payload: Any) -> PublishedFile:
        return self.write_bytes(rel_dest, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def _publish(self, dest: str, size: int, upload: Callable[[str], None]) -> str:
        """Run `upload(target)` so that `dest` is whole once this returns; on local disk, never partly visible.

        Local disk (Drive's mount too): a temporary name, then one atomic rename. Anywhere else one put
        at the final name: an object store shows an object only once its upload completes, and the
        manifest, written last, is what commits a state; a temporary name there cost a copy and a delete
        per file (three commits per file on hf://), as fsspec's `mv` is no rename on object stores.
        """
        parent, name = dest.rsplit("/", 1)
        self.fs.makedirs(parent, exist_ok=True)
        target = f"{parent}/.{name}{PART_MARK}{uuid.uuid4().hex[:8]}" if self.location.is_local else dest
        try:
            upload(target)
            written = self.fs.size(target)
            if written != size:
                raise OSError(f"upload of {name} is incomplete ({written} of {size} bytes); it was not published")
            if target != dest:
                os.replace(target, dest)  # atomic on one local filesystem, unlike fsspec's shutil.move
        except BaseException:
            if target != dest:
                self._remove_quietly(target)
            raise
        finally:
            self.fs.invalidate_cache(parent)
        return dest

    def _remove_quietly(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path)
        except Exception:  # noqa: BLE001 - cleanup must not hide the original error
            pass

    # --- reading ------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_json(self, rel: str) -> Any:
        with self.fs.open(self.path(rel), "rb") as fh:
            return json.loads(fh.read().decode())

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) under `rel`, without temporary upload names."""
        path = self.path(rel)
        self.fs.invalidate_cache(path)
        if not self.fs.exists(path):
            return []
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(path, detail=False)]
        return sorted(n for n in names if PART_MARK not in n)

    # --- states -------------------------------------------------------------------------------
    def publish_state(
        self, local_dir: str | Path, step: int, *, epoch: int, fingerprint: str, extra: dict[str, Any] | None = None,
        keep_last: int | None = None,
    ) -> StateInfo:
        """Upload a state folder: files first, then the manifest with their sha256, then LATEST."""
        local_dir = Path(local_dir)
        rel_dir = f"state/{step:09d}"
        files = {}
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = file.relative_to(local_dir).as_posix()
            published = self.publish_file(file, f"{rel_dir}/{rel}")
            files[rel] = {"size": published.size, "sha256": published.sha256}
        manifest = {
            "step": step,
            "epoch": epoch,
            "fingerprint": fingerprint,
            "files": files,
            "published_at": time.time(),
            **(extra or {}),
        }
        self.write_json(f"{rel_dir}/{MANIFEST}", manifest)
        self.write_bytes(f"state/{LATEST}", f"{step}\n".encode())
        if keep_last:
            self.prune_states(keep_last)
        return StateInfo(step, self.state_dir(step), manifest)

    def list_states(self) -> list[StateInfo]:
        """Published states (those with a manifest), oldest first."""
        states = []
        for name in self.listdir("state"):
            if not name.isdigit():
                continue
            rel = f"state/{name}/{MANIFEST}"
            if not self.exists(rel):
                continue
            try:
                manifest = self.read_json(rel)
            except (OSError, ValueError):
                continue
            states.append(StateInfo(int(name), self.path("state", name), manifest))
        return sorted(states, key=lambda s: s.step)

    def latest_pointer(self) -> int | None:
        try:
            with self.fs.open(self.path("state", LATEST), "rb") as fh:
                return int(fh.read().decode().strip())
        except (OSError, ValueError):
            return None

    def verify_state(self, state: StateInfo, *, check_hashes: bool = False) -> None:
        """Raise StateVerificationError unless every manifest file is present with its size (and hash)."""
        files = state.manifest.get("files") or {}
        if not files:
            raise StateVerificationError(f"state at step {state.step} lists no files")
        for rel, meta in files.items():
            path = f"{state.path}/{rel}"
            try:
                size = self.fs.size(path)
            except (OSError, FileNotFoundError) as exc:
                raise StateVerificationError(f"state at step {state.step} is missing {rel}") from exc
            if size != meta["size"]:
                raise StateVerificationError(
                    f"state at step {state.step}: {rel} has {size} bytes, manifest says {meta['size']}"
                )
            if check_hashes and sha256_file(path, self.fs) != meta["sha256"]:
                raise StateVerificationError(f"state at step {state.step}: {rel} does not match its sha256")

    def iter_valid_states(self, *, check_hashes: bool = False) -> Iterator[tuple[StateInfo, str | None]]:
        """Newest first: (state, None) for a verified state, (state, reason) for one to skip."""
        for state in reversed(self.list_states()):
            try:
                self.verify_state(state, check_hashes=check_hashes)
            except StateVerificationError as exc:
                yield state, str(exc)
                continue
            yield state, None

    def download_state(self, state: StateInfo, local_dir: str | Path) -> Path:
        """Copy a state to local disk and check every file against the manifest's sha256."""
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        for rel, meta in (state.manifest.get("files") or {}).items():
            dest = local_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{state.path}/{rel}", str(dest))
            if sha256_file(dest) != meta["sha256"]:
                raise StateVerificationError(f"state at step {state.step}: downloaded {rel} does not match its sha256")
        return local_dir

    def prune_states(self, keep_last: int) -> list[int]:
        """Delete all but the newest `keep_last` published states (never the one LATEST names)."""
        states = self.list_states()
        latest = self.latest_pointer()
        doomed = [s for s in states[:-keep_last] if s.step != latest] if keep_last > 0 else []
        for state in doomed:
            # The manifest goes first so a half-deleted state is never taken for a valid one.
            self._remove_quietly(f"{state.path}/{MANIFEST}")
            self.fs.rm(state.path, recursive=True)
        return [s.step for s in doomed]

    # --- checkpoints --------------------------------------------------------------------------
    def list_checkpoints(self) -> list[str]:
        return [n for n in self.listdir("checkpoints") if n.endswith(".safetensors")]

    def epoch_checkpoints(self) -> list[tuple[int, str]]:
        found = [(epoch_of(self.project, name), name) for name in self.list_checkpoints()]
        return sorted((epoch, name) for epoch, name in found if epoch is not None)

    def prune_checkpoints(self, keep_last: int) -> list[str]:
        """Keep the newest `keep_last` epoch LoRAs (0 keeps all) and the best epoch's; the final LoRA is never pruned."""
        if keep_last <= 0:
            return []
        best = self.best_epoch()
        doomed = [name for _, name in self.epoch_checkpoints()[:-keep_last] if best is None or name != best["file"]]
        for name in doomed:
            self.fs.rm(self.path("checkpoints", name))
            if self.exists(f"checkpoints/{kohya_name(name)}"):  # its kohya-format copy goes with it
                self.fs.rm(self.path("checkpoints", kohya_name(name)))
        return doomed

    def best_epoch(self) -> dict[str, Any] | None:
        """The LoRA with the lowest validation loss in its metadata (anima_validation_loss, written by the
        native trainer), as {"epoch", "file", "loss", "set"}; None when no LoRA here has one. Read from the
        headers alone, so it holds across sessions and for a run that was killed."""
        best = None
        for epoch, name in [*self.epoch_checkpoints(), (None, self.checkpoint_name())]:
            meta = self.lora_metadata(f"checkpoints/{name}") or {}
            try:
                loss = float(meta["anima_validation_loss"])
            except (KeyError, ValueError):
                continue
            if not math.isfinite(loss):
                continue
            if epoch is None:
                # The final LoRA carries the last epoch's loss; an epoch file of the same epoch says it first.
                epoch = int(meta.get("ss_epoch", 0)) or None
            if best is None or loss < best["loss"]:
                best = {"epoch": epoch, "file": name, "loss": loss, "set": meta.get("anima_validation_set", "")}
        return best

    def lora_metadata(self, rel: str) -> dict[str, str] | None:
        """The `__metadata__` of a safetensors file in the store ({} without one), read from its header
        alone; None when the file is missing or is not safetensors."""
        try:
            with self.fs.open(self.path(rel), "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= 100 * 1024 * 1024:  # the format caps its header at 100 MB
                    return None
                header = json.loads(fh.read(size))
        except (OSError, ValueError):
            return None
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        return meta if isinstance(meta, dict) else {}

    # --- archive ------------------------------------------------------------------------------
    def archive(self, rels: list[str], stamp: str | None = None) -> dict[str, str]:
        """Move folders or files of this project under archive/, kept whole; return {rel: new path}.

        `state` goes to `archive/state-<stamp>`, `checkpoints/x.safetensors` to
        `archive/checkpoints-<stamp>/x.safetensors`. The stamp (the time, to the second) gets a suffix
        when a folder of that name exists already, so an archive is never moved into or over another.
        """
        present = [rel.strip("/") for rel in rels if self.exists(rel.strip("/"))]
        if not present:
            return {}
        stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
        tops = {rel.split("/", 1)[0] for rel in present}
        suffix, n = stamp, 1
        while any(self.exists(f"{ARCHIVE}/{top}-{suffix}") for top in tops):
            n += 1
            suffix = f"{stamp}-{n}"
        moved = {}
        for rel in present:
            top, _, rest = rel.partition("/")
            dest = self.path(ARCHIVE, f"{top}-{suffix}", rest)
            self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            if self.location.is_local:
                os.replace(self.path(rel), dest)  # one rename: never a half-moved folder
            else:
                # copy, then delete: an interruption leaves both copies, never neither
                self.fs.mv(self.path(rel), dest, recursive=True)
            moved[rel] = dest
        self.fs.invalidate_cache(self.root)
        self.fs.invalidate_cache(self.path(ARCHIVE))
        return moved

    # --- run history --------------------------------------------------------------------------
    def append_run(self, record: dict[str, Any]) -> None:
        """Add one line to runs.jsonl. Object stores cannot append, so the file is rewritten atomically."""
        existing = b""
        if self.exists("runs.jsonl"):
            with self.fs.open(self.path("runs.jsonl"), "rb") as fh:
                existing = fh.read()
        if existing and not existing.endswith(b"\n"):
            existing += b"\n"
        line = json.dumps(record, sort_keys=True, default=str).encode() + b"\n"
        self.write_bytes("runs.jsonl", existing + line)

    def runs(self) -> list[dict[str, Any]]:
        if not self.exists("runs.jsonl"):
            return []
        with self.fs.open(self.path("runs.jsonl"), "rb") as fh:
            lines = fh.read().decode().splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
