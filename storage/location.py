"""Resolve a location string (local path, /content/drive/..., gs://, s3://, hf://, memory://) to fsspec.

Also the one place that tells "this host cannot be reached" apart from other failures, for the dataset
download and the run store alike, whatever library (requests, httpx, aiohttp, ftplib) raised it.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations, registry

from ..config import cache_root, cache_root_setting
from ..errors import UserInputError, setting
from .drive import ensure_drive_mounted, is_drive_path


@dataclass(frozen=True)
class Location:
    """A filesystem and a root path on it. `url` is what the user wrote, for messages."""

    fs: fsspec.AbstractFileSystem
    root: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def is_drive(self) -> bool:
        return self.is_local and is_drive_path(self.root)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])


def resolve_location(location: str, *, mount_drive: bool = True, **storage_options) -> Location:
    """Turn a user's location string into (filesystem, root path).

    Raises:
        UserInputError: the string is empty, its URL scheme is unknown or its package is not installed,
            or its host cannot be reached (for filesystems that connect when created, such as ftp://).
        UserInputError: a Drive path outside Colab, or the mount failed (field "storage").
    """
    text = (location or "").strip()
    if not text:
        raise UserInputError("storage location is empty; pass a folder or a URL such as gs://bucket/runs")
    if "://" not in text:
        path = str(Path(text).expanduser().absolute())
        if is_drive_path(path) and mount_drive:
            ensure_drive_mounted(path)
        return Location(LocalFileSystem(), path, text)
    unknown = unknown_protocol(text)
    if unknown:
        raise UserInputError(f"cannot open storage {text!r}: unknown URL scheme '{unknown}://'; use a folder, gs://, s3:// or hf://")
    try:
        fs, root = fsspec.url_to_fs(text, **storage_options)
    except ImportError as exc:
        raise UserInputError(f"cannot open storage {text!r}: {exc}; {install_hint(text)}") from exc
    except ValueError as exc:
        raise UserInputError(f"cannot open storage {text!r}: {exc}; check the URL") from exc
    except Exception as exc:  # some filesystems (ftp, sftp) connect as they are created
        message = unreachable_message(text, exc)
        if message is None:
            raise
        raise UserInputError(message) from exc
    return Location(fs, root.rstrip("/") or root, text)


def resolve_storage(location: str, *, create: bool = True) -> Location:
    """resolve_location for the run store, refusing places that cannot keep it.

    `create=False` (doctor) checks that a local folder could be created without creating it.

    Raises:
        UserInputError: memory:// (gone when the process ends), a local path that is a file or
            cannot be created, or a URL whose host cannot be reached; one line saying what to do instead.
    """
    loc = resolve_location(location)
    protocols = loc.fs.protocol if isinstance(loc.fs.protocol, tuple) else (loc.fs.protocol,)
    if "memory" in protocols:
        raise UserInputError(
            f"{setting('storage', location)}: memory:// lives only inside this process, so the LoRA would be lost when "
            "it ends; pass a folder or a URL such as gs://bucket/runs",
            field="storage",
        )
    if loc.is_local:
        ensure_local_folder(loc.root, setting("storage"), instead="a folder or a URL such as gs://bucket/runs", create=create)
    else:
        _check_reachable(loc)
    return loc


def _check_reachable(loc: Location) -> None:
    """Ask the store one cheap question now, so an unreachable host stops the run before it starts.

    Only an unreachable host is judged here: any other failure (credentials, permissions) is met again,
    and handled, where the store is first written.
    """
    try:
        loc.fs.exists(loc.root)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        message = unreachable_message(loc.url, exc)
        if message is not None:
            raise UserInputError(message) from exc


def ensure_local_folder(
    path: str | Path, what: str, *, instead: str = "a folder", fix: str | None = None, create: bool = True
) -> Path:
    """Create `path` (and parents) or raise UserInputError saying why it cannot be a folder.

    `what` names the folder: a setting (`errors.setting("work_dir")`), a variable or a plain label.
    `instead` is what the message tells the user to pass (a setting that also takes URLs says so); `fix`
    replaces the whole advice, for folders that come from an environment variable rather than a setting.
    `create=False` only checks: the folder, or else its nearest existing parent, must be writable.
    """
    path = Path(path).expanduser()
    pass_instead, pass_writable = (fix, fix) if fix else (f"pass {instead}", "pass a writable folder")
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker == path:
        raise UserInputError(f"{what} {path} is a file, not a folder; {pass_instead}")
    if blocker is not None:
        raise UserInputError(f"{what} {path}: {blocker} is a file, not a folder; {pass_instead}")
    if not create:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            where = "" if existing == path else f": its parent {existing}"
            raise UserInputError(f"{what} {path}{where} is not writable (read-only or not yours); {pass_writable}")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{what} {path}: cannot create this folder ({exc.strerror or exc}); {pass_writable}") from exc
    # An existing folder on a read-only mount passes mkdir; access() says EROFS even to root.
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserInputError(f"{what} {path} is not writable (read-only or not yours); {pass_writable}")
    return path


def ensure_cache_folder(
    path: str | Path | None = None, *, label: str = "cache folder", alternative: str = "", create: bool = True
) -> Path:
    """Create the local cache folder (or `path`, a folder under it); a refusal names the variable that placed it.

    `alternative` is a setting that avoids the folder, offered after the fix (", or pass " + setting("work_dir")).
    """
    variable = cache_root_setting()
    value = os.environ.get(variable) or str(Path.home())
    fix = f"it comes from {variable}={value}: set ANIMA_LORA_CACHE to a writable folder"
    return ensure_local_folder(cache_root() if path is None else path, label, fix=fix + alternative, create=create)


def ensure_hf_cache_folder() -> Path:
    """Check (without creating it) that huggingface_hub can write its download cache."""
    from huggingface_hub import constants  # noqa: PLC0415

    setting = next((name for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME") if os.environ.get(name)), None)
    fix = f"set {setting or 'HF_HOME'} to a writable folder"
    if setting is None:
        fix = f"it comes from {'XDG_CACHE_HOME' if os.environ.get('XDG_CACHE_HOME') else 'HOME'}: {fix}"
    return ensure_local_folder(constants.HF_HUB_CACHE, "Hugging Face download cache", fix=fix, create=False)


# --- URL schemes and unreachable hosts (shared with dataset/fetch.py) ------------------------------

# The packages of this package's [gcs] and [s3] extras. A hint names the package, not the extra: this
# package is not on PyPI, so `pip install 'anima-lora-flow[gcs]'` would look for it in the wrong index.
_EXTRA_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs"}
# Schemes whose netloc is a host name; for gs://, s3://, hf:// it is a bucket or a repo type instead.
_HOST_SCHEMES = frozenset({"http", "https", "ftp", "sftp", "ssh", "smb", "webdav", "dav"})
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH: "network unreachable", errno.EHOSTUNREACH: "host unreachable"}


def unknown_protocol(url: str) -> str | None:
    """The first protocol of `url` (chains like zip::s3:// included) that fsspec has never heard of, else None.

    A known protocol whose package is missing is not unknown: opening it says which package to install.
    """
    for part in url.split("::"):
        if "://" in part:
            protocol = part.split("://", 1)[0].lower()
            if protocol not in known_implementations and protocol not in registry:
                return protocol
    return None


def install_hint(url: str) -> str:
    """What to install for the protocol of `url` (a known fsspec protocol whose package is missing)."""
    protocol = url.split("://", 1)[0].lower()
    if protocol in _EXTRA_PACKAGES:
        return f"install it with: pip install {_EXTRA_PACKAGES[protocol]}"
    package = known_implementations.get(protocol, {}).get("class", "").split(".")[0]
    return f"install its package ({package})" if package else "install the filesystem's package"


@dataclass(frozen=True)
class Unreachable:
    """Why a host could not be reached, and the host and port when the error names them."""

    reason: str
    host: str | None = None
    port: int | None = None


def unreachable(exc: BaseException) -> Unreachable | None:
    """Unreachable(...) when `exc`, or any error it wraps, says the host's name did not resolve, the
    connection was refused or no route leads there; None for anything else.

    requests hides the socket error under urllib3's MaxRetryError.reason, httpx under __cause__,
    aiohttp under .os_error, fsspec under __context__: all of these are walked.
    """
    reason, host, port = None, None, None
    todo, seen = deque([exc]), set()
    while todo and len(seen) < 32:
        current = todo.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        named = _host_of(current)
        if named[0]:  # the innermost wins: behind a proxy, the refusing host is the proxy, not the target
            host, port = named
        reason = reason or _reason_of(current)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), getattr(current, "os_error", None)]
        linked += list(getattr(current, "args", ()))
        linked += list(getattr(current, "exceptions", ()) or ())  # ExceptionGroup
        todo.extend(e for e in linked if isinstance(e, BaseException))
    return Unreachable(reason, host, port) if reason else None


def unreachable_reason(url: str, exc: BaseException) -> str | None:
    """"cannot reach host 'x' (name not resolved)" for `url`, or None when `exc` is not about reaching a host."""
    found = unreachable(exc)
    if found is None:
        return None
    host, port = found.host, found.port
    if host is None:
        parsed = urlparse(url)
        if parsed.scheme.lower() in _HOST_SCHEMES and parsed.hostname:
            host, port = parsed.hostname, parsed.port
    if host and port and found.reason != "name not resolved":  # a refusal is the port's; a name has none
        host = f"{host}:{port}"
    where = f"host {host!r}" if host else f"the server for {url!r}"
    return f"cannot reach {where} ({found.reason})"


def unreachable_message(url: str, exc: BaseException) -> str | None:
    """The one-line error for an unreachable host, with its fix; None when `exc` is about something else."""
    reason = unreachable_reason(url, exc)
    return f"{reason}: check the URL and the network" if reason else None


def _reason_of(exc: BaseException) -> str | None:
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return _UNREACHABLE_ERRNOS[exc.errno]
    return None


def _host_of(exc: BaseException) -> tuple[str | None, int | None]:
    """The host and port an exception names: urllib3's connection, requests' and httpx's request, aiohttp's key."""
    conn = getattr(exc, "conn", None)  # urllib3 NewConnectionError
    if isinstance(getattr(conn, "host", None), str):
        return conn.host, getattr(conn, "port", None)
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx, for an error raised without a request
        request = None
    url = getattr(request, "url", None)
    if isinstance(url, str):  # requests' PreparedRequest
        parsed = urlparse(url)
        return parsed.hostname, parsed.port
    if url is not None and isinstance(getattr(url, "host", None), str):  # httpx.URL
        return url.host or None, url.port
    host = getattr(exc, "host", None)  # aiohttp ClientConnectorError
    if isinstance(host, str) and host:
        port = getattr(exc, "port", None)
        return host, port if isinstance(port, int) else None
    return None, None
