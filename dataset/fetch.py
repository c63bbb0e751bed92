"""Fetch a dataset source (local path, Google Drive, http(s), fsspec URL) onto the local disk."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timezone
from typing import Literal
from urllib.parse import parse_qs, urlparse

import requests

from ..core.dataset_report import DatasetError
from ..storage.location import install_hint, unknown_protocol, unreachable_reason

SourceKind = Literal["folder", "file", "drive-file", "drive-folder", "http", "fsspec"]

_DRIVE_HOSTS = {"drive.google.com", "docs.google.com", "drive.usercontent.google.com"}
# A bare Drive id: 25-60 id characters mixing upper case, lower case and digits, and not a run of words joined
# by _ or - (Anime_Character_Dataset_V2). Real ids are random; a mistyped folder name must stay a local path.
_DRIVE_ID = re.compile(r"^(?=[^A-Z]*[A-Z])(?=[^a-z]*[a-z])(?=\D*\d)(?!.*(?:(?:[A-Z]?[a-z]{3,}|[A-Z]{3,})[_-]){2})[A-Za-z0-9_-]{25,60}$")
_LOOSE_ID = re.compile(r"^[A-Za-z0-9_-]{25,}$")  # could be a Drive id the strict check refused: name the share link
_CHUNK = 1 << 16  # small enough that a cut connection leaves most bytes for the resume
_DRIVE_STAMP = ".anima-download.json"  # hidden: neither validated nor taken for the one archive of a folder
_DRIVE_HINT = (
    "open its sharing settings and choose 'Anyone with the link', or copy it into your own Drive "
    "(and mount Drive and pass the /content/drive/... path)"
)


log = logging.getLogger("anima_lora_flow.dataset")


class FetchError(ConnectionError):
    """A download failed for a reason that may go away (network, server busy): worth a retry."""


class UnreachableError(DatasetError):
    """The source's host cannot be reached (name not resolved, connection refused): a retry will not help."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{reason}: check the URL and the network")
        self.url, self.reason = url, reason


def unreachable_error(url: str, exc: BaseException) -> UnreachableError | None:
    """UnreachableError when `exc` (or what it wraps) says `url`'s host cannot be reached, else None."""
    reason = unreachable_reason(url, exc)
    return UnreachableError(url, reason) if reason else None


@dataclass(frozen=True)
class Source:
    """What a dataset string names: its kind and the path, id or URL to fetch."""

    kind: SourceKind
    value: str


def classify_source(source: str) -> Source:
    """Decide what `source` is: an existing local path wins, then Drive links/ids, then URLs.

    Raises:
        DatasetError: the string is empty or names a local path that does not exist.
    """
    text = source.strip()
    if not text:
        raise DatasetError("the dataset is empty; pass a folder, a .zip, a Drive link or a URL")
    if text.startswith("file://"):
        text = urlparse(text).path
    local = Path(text).expanduser()
    if local.is_dir():
        return Source("folder", str(local.absolute()))
    if local.is_file():
        return Source("file", str(local.absolute()))
    drive = parse_drive_link(text)
    if drive:
        return Source("drive-folder" if drive[1] else "drive-file", drive[0])
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        return Source("http", text)
    if "://" in text:
        return Source("fsspec", text)
    alternative = "a URL or a Google Drive share link" if _LOOSE_ID.match(text) else "a URL"
    raise DatasetError(f"dataset {text!r} not found: no such folder or file; check the path (or pass {alternative})")


def parse_drive_link(text: str) -> tuple[str, bool] | None:
    """(id, is_folder) for a Google Drive share link or a bare file id; None for anything else."""
    text = text.strip()
    if _DRIVE_ID.match(text):
        return text, False
    url = urlparse(text)
    if url.netloc.lower() not in _DRIVE_HOSTS:
        return None
    folder = re.search(r"/folders/([A-Za-z0-9_-]+)", url.path)
    if folder:
        return folder.group(1), True
    file = re.search(r"/(?:file|document|spreadsheets|presentation)/d/([A-Za-z0-9_-]+)", url.path)
    if file:
        return file.group(1), False
    ids = parse_qs(url.query).get("id")
    return (ids[0], False) if ids else None


def cache_key(text: str) -> str:
    """A short, filesystem-safe name for a download folder."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may fix (network, server busy); False for user input and bugs."""
    if isinstance(exc, DatasetError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, requests.RequestException))


# --- http(s) ----------------------------------------------------------------------------------


def download_http(url: str, dest: Path, *, attempts: int = 5, backoff: float = 2.0, timeout: float = 60) -> Path:
    """Download `url` to `dest`, resuming a `.part` file with a Range request where the server allows.

    A copy already at `dest` is reused only while the server's ETag, Last-Modified and size still match
    the ones saved with it (an updated dataset must not be trained from a stale copy); when the server
    cannot be asked, the copy is used with a one-line notice.

    This is the only retry layer of an http(s) dataset (the dataset task has no retries of its own).
    Why not fsspec's HTTP filesystem (measured with fsspec 2026.9 against the servers of
    tests/dataset/test_dataset_fetch.py): its `get_file` neither retries nor resumes, so a connection
    cut at 200 of 400 KB failed the download after one request; its ranged reads refuse a server
    without Range support (`python -m http.server`: "The HTTP server doesn't appear to support range
    requests"); and it keeps no ETag/Last-Modified stamp to revalidate a cached copy against.

    Raises:
        DatasetError: the server refuses the URL (404, 401, 403...), its host cannot be reached (name
            not resolved, connection refused), or it answers with a web page instead of a file:
            retrying will not help.
        FetchError: the network kept failing after `attempts` tries with exponential backoff.
    """
    if dest.is_file() and _cached_copy_is_current(url, dest, timeout):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():  # the server has a newer file: a leftover .part may hold the old one's bytes
        part.unlink(missing_ok=True)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            stamp = _download_once(url, part, timeout)
            part.replace(dest)
            _stamp_path(dest).write_text(json.dumps(stamp))
            return dest
        except Exception as exc:  # noqa: BLE001 - classified by is_transient; anything else is raised as it is
            if not is_transient(exc):
                raise
            unreachable = unreachable_error(url, exc)
            if unreachable:  # DNS or a closed port does not heal during a backoff: say so now
                raise unreachable from exc
            last = exc
            if attempt + 1 < attempts:
                time.sleep(backoff * 2**attempt)
    raise FetchError(f"could not download {url} after {attempts} tries ({last}); check the connection and retry")


def _download_once(url: str, part: Path, timeout: float) -> dict:
    """Fetch the rest of `url` into `part`; return the response's validators (ETag, Last-Modified, size)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and have:  # our partial file is already whole (or stale): start over
            part.unlink()
            raise FetchError("the server refused to resume; starting again")
        _check_status(resp, url)
        _refuse_web_page(resp, url)
        resume = resp.status_code == 206
        expected = int(resp.headers.get("Content-Length", -1))
        got = 0
        with open(part, "ab" if resume else "wb") as out:
            for chunk in resp.iter_content(_CHUNK):
                out.write(chunk)
                got += len(chunk)
        if 0 <= expected != got:
            raise FetchError(f"connection closed after {got} of {expected} bytes")
        stamp = _validators(resp)
    stamp["size"] = part.stat().st_size
    stamp["downloaded_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return stamp


def _refuse_web_page(resp: requests.Response, url: str) -> None:
    """A share or login page instead of the file is the usual mistake: name it, instead of a 'corrupt zip' later."""
    kind = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if resp.status_code == 200 and kind in ("text/html", "application/xhtml+xml"):
        raise DatasetError(
            f"{url} returned a web page ({kind}), not an archive; use the file's direct download link, not its share or preview page"
        )


# --- revalidating a cached download --------------------------------------------------------------


def _cached_copy_is_current(url: str, dest: Path, timeout: float) -> bool:
    """True to reuse `dest`: the server reports the same file, or cannot be asked (then say which copy is used)."""
    saved = _read_stamp(dest)
    try:
        remote = _remote_validators(url, min(timeout, 15))
    except (requests.RequestException, FetchError) as exc:
        reason = unreachable_reason(url, exc) or type(exc).__name__
        log.warning("%s: using the copy downloaded %s, as the server cannot be reached (%s)",
                    url, saved.get("downloaded_at", "earlier"), reason)
        return True
    if remote is None:  # the server refuses a check (404, 403...): the real download will say why
        return False
    for key in ("etag", "last_modified", "size"):
        if remote.get(key) is not None and saved.get(key) is not None and remote[key] != saved[key]:
            return False
    if saved.get("size") is None and remote.get("size") is not None:  # a copy from before stamps were kept
        return remote["size"] == dest.stat().st_size
    return True


def _remote_validators(url: str, timeout: float) -> dict | None:
    """The server's ETag, Last-Modified and size for `url` (HEAD, or the headers of a GET it cuts short); None if refused."""
    headers = {"Accept-Encoding": "identity"}
    resp = requests.head(url, headers=headers, allow_redirects=True, timeout=timeout)
    if resp.status_code in (405, 501):  # HEAD not allowed: a GET's headers say the same; stop before the body
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as got:
            resp = got
    if resp.status_code == 429 or resp.status_code >= 500:
        raise FetchError(f"the server answered {resp.status_code}")
    return _validators(resp) if resp.status_code == 200 else None


def _validators(resp: requests.Response) -> dict:
    length = resp.headers.get("Content-Length")
    if resp.status_code == 206:  # a resumed download: the whole size is after the slash of Content-Range
        length = resp.headers.get("Content-Range", "").rpartition("/")[2]
    return {
        "etag": resp.headers.get("ETag"),
        "last_modified": resp.headers.get("Last-Modified"),
        "size": int(length) if length and length.isdigit() else None,
    }


def _stamp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".stamp.json")


def _read_stamp(dest: Path) -> dict:
    try:
        return json.loads(_stamp_path(dest).read_text())
    except (OSError, ValueError):
        return {}


def _check_status(resp: requests.Response, url: str) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code == 429 or code >= 500:
        raise FetchError(f"the server answered {code}")
    if code in (401, 403):
        raise DatasetError(f"{url} needs a login ({code}); make the file public or download it and pass the local path")
    raise DatasetError(f"{url} answered {code}; check that the link points to the .zip itself")


# --- Google Drive -------------------------------------------------------------------------------


def download_drive(file_id: str, dest_dir: Path, *, folder: bool = False) -> Path:
    """Download a Drive file (returns its path) or folder (returns `dest_dir`) with gdown, resuming.

    Drive cannot be asked whether a file changed, so a finished download in `dest_dir` is reused as
    it is; each reuse logs a warning naming the copy, when it was downloaded, and the folder to delete
    for a fresh download. When Drive cannot be reached, a finished copy is used with the same notice.

    Raises:
        DatasetError: the file is private, over its download quota, or missing, or Google Drive cannot
            be reached and no copy was downloaded before (one sentence, with the fix).
        FetchError: the network failed.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = _read_json(dest_dir / _DRIVE_STAMP)
    before = {p.name: p.stat().st_mtime_ns for p in dest_dir.iterdir() if p.is_file()}
    what = f"Google Drive {'folder' if folder else 'file'} {file_id}"
    try:
        got = _gdown(file_id, dest_dir, folder)
    except UnreachableError as exc:
        cached = _finished_drive_copy(dest_dir, stamp, folder)
        if cached is None:
            raise
        log.warning("%s: using the copy downloaded %s in %s, as Google Drive cannot be reached (%s)",
                    what, stamp.get("downloaded_at", "earlier"), dest_dir, exc.reason)
        return cached
    reused = got.name in before and got.is_file() and got.stat().st_mtime_ns == before[got.name]
    if folder and stamp:
        log.warning("%s: files already in %s (downloaded %s) were reused and only new ones fetched; "
                    "Drive files are not checked for updates: delete that folder to download them all again",
                    what, dest_dir, stamp.get("downloaded_at", "earlier"))
    elif reused:
        when = stamp.get("downloaded_at") if stamp.get("file") == got.name else _iso(got.stat().st_mtime)
        log.warning("%s: using the copy downloaded %s (%s); Drive files are not checked for updates: "
                    "delete %s to download it again", what, when, got, dest_dir)
        stamp = {"file": got.name, "downloaded_at": when}
    else:
        stamp = {"file": None if folder else got.name, "downloaded_at": _iso(time.time())}
    (dest_dir / _DRIVE_STAMP).write_text(json.dumps(stamp))
    return got


def _gdown(file_id: str, dest_dir: Path, folder: bool) -> Path:
    """One quick try, then gdown's own retries only for failures that may heal (not DNS, not a refusal)."""
    import gdown  # noqa: PLC0415  (imports bs4 and friends; only Drive sources need it)

    url = f"https://drive.google.com/uc?id={file_id}"
    # gdown never retries a folder's listing, so a folder fails fast anyway and keeps its per-file retries.
    for retries in ((3,) if folder else (0, 3)):
        try:
            if folder:
                gdown.download_folder(id=file_id, output=str(dest_dir), quiet=True, resume=True, retries=retries)
                return dest_dir
            out = gdown.download(id=file_id, output=str(dest_dir) + "/", quiet=True, resume=True, retries=retries)
            if not out:
                raise translate_gdown_error(RuntimeError("no file"), file_id)
            return Path(out)
        except (gdown.exceptions.DownloadError, requests.RequestException) as exc:  # FileURLRetrievalError is a DownloadError
            unreachable = unreachable_error(url, exc)
            if unreachable:
                raise unreachable from exc
            if isinstance(exc, gdown.exceptions.DownloadError):
                raise translate_gdown_error(exc, file_id) from exc
            if retries:
                raise FetchError(f"Google Drive download of {file_id} failed ({exc}); check the connection and retry") from exc
    raise AssertionError("unreachable: the last try returns or raises")


def _finished_drive_copy(dest_dir: Path, stamp: dict, folder: bool) -> Path | None:
    """The copy an earlier download finished (its stamp says so), or None."""
    if not stamp:
        return None
    if folder:
        return dest_dir
    name = stamp.get("file")
    return dest_dir / name if name and (dest_dir / name).is_file() else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def translate_gdown_error(exc: BaseException, file_id: str) -> DatasetError:
    """One sentence a user can act on, for gdown's quota, permission and parsing errors."""
    text = str(exc)
    if "Too many users" in text or "many accesses" in text or "quota" in text.lower():
        why = "Google Drive refused the download: too many people downloaded it recently (quota)"
    elif "permission" in text.lower() or "Cannot retrieve the public link" in text or "401" in text or "403" in text:
        why = "Google Drive refused the download: the file is not shared publicly"
    else:
        why = f"Google Drive download of {file_id} failed ({text.splitlines()[0] if text else type(exc).__name__})"
    return DatasetError(f"{why}; {_DRIVE_HINT}")


# --- fsspec -------------------------------------------------------------------------------------


def download_fsspec(url: str, dest_dir: Path) -> Path:
    """Copy a file or folder at an fsspec URL into `dest_dir`; return the local file or folder.

    Raises:
        DatasetError: the URL scheme is unknown, its package is missing, its host cannot be reached,
            or nothing is at the URL.
    """
    unknown = unknown_protocol(url)
    if unknown:
        raise DatasetError(
            f"unknown URL scheme '{unknown}://'; use a local path, http(s)://, a Google Drive link, gs://, s3:// or hf://"
        )
    try:
        return _copy_fsspec(url, dest_dir)
    except ImportError as exc:
        raise DatasetError(f"cannot open {url}: {exc}; {install_hint(url)}") from exc
    except ValueError as exc:  # DatasetError is a ValueError too: keep its own message
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot open {url}: {exc}; check the URL") from exc
    except Exception as exc:  # some filesystems connect when created (ftp), others on first use (hf, gs, s3)
        unreachable = unreachable_error(url, exc)
        if unreachable is None:
            raise
        raise unreachable from exc


def _copy_fsspec(url: str, dest_dir: Path) -> Path:
    import fsspec  # noqa: PLC0415

    fs, path = fsspec.url_to_fs(url)
    if not fs.exists(path):
        raise DatasetError(f"{url} does not exist; check the URL")
    dest_dir.mkdir(parents=True, exist_ok=True)
    if fs.isdir(path):
        target = dest_dir / "folder"
        if not target.is_dir():  # copy then rename, so an interrupted copy is never taken for a dataset
            partial = dest_dir / "folder.partial"
            shutil.rmtree(partial, ignore_errors=True)
            fs.get(path.rstrip("/") + "/", str(partial) + "/", recursive=True)
            partial.rename(target)
        return target
    target = dest_dir / (Path(path).name or "dataset")
    if not target.is_file():
        fs.get(path, str(target) + ".part")
        Path(str(target) + ".part").replace(target)
    return target
