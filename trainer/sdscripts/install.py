"""Installs kohya's sd-scripts at a pinned commit, in its own venv, once per commit (cached).

Its requirements pin older accelerate/transformers/diffusers/huggingface-hub than this project
needs, so they go into a separate venv (not --system-site-packages) whose `accelerate` runs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

SD_SCRIPTS_URL = "https://github.com/kohya-ss/sd-scripts.git"
# A local clone to install from instead of GitHub (an offline machine, a mirror); it must hold the pinned commit.
LOCAL_CHECKOUT_ENV = "ANIMA_SD_SCRIPTS_DIR"
ANIMA_MODULES = ("library.anima_utils", "networks.lora_anima")
_NETWORK_ERRORS = ("could not resolve host", "failed to connect", "unable to access", "timed out", "unreachable")


class SdScriptsInstallError(RuntimeError):
    """sd-scripts could not be installed; the message says what to fix."""


def install_root(cache_dir: str | Path, commit: str) -> Path:
    """Folder holding the checkout (`sd-scripts/`), its venv (`venv/`) and the marker."""
    return Path(cache_dir).expanduser() / f"sd-scripts-{commit}"


def venv_python(sd_scripts_dir: str | Path) -> Path:
    """The Python of the venv made for this checkout."""
    return Path(sd_scripts_dir).parent / "venv" / "bin" / "python"


def accelerate_executable(sd_scripts_dir: str | Path) -> Path:
    """The `accelerate` to launch this checkout with (pass to `build_command(python=...)`)."""
    return Path(sd_scripts_dir).parent / "venv" / "bin" / "accelerate"


def ensure_sd_scripts(
    commit: str,
    cache_dir: str | Path,
    *,
    repo_url: str | None = None,
    pin_torch: bool = True,
    echo=print,
) -> Path:
    """Clone sd-scripts at `commit`, install it into its own venv, check its Anima modules import.

    Idempotent: a marker holding the commit and a hash of the requirements skips all work on the
    next call. Returns the checkout folder. `repo_url` defaults to the local clone named by
    $ANIMA_SD_SCRIPTS_DIR when set, else GitHub; either way the pinned commit is checked out.

    Raises:
        SdScriptsInstallError: git missing, network unreachable, unknown commit, pip or import failure.
    """
    repo_url = repo_url or source_url()
    root = install_root(cache_dir, commit)
    repo, venv, marker = root / "sd-scripts", root / "venv", root / "installed.json"
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        pins = torch_pins() if pin_torch else []
        if _marker_matches(marker, commit, repo, venv, pins):
            return repo
        git = require_git()
        echo(f"Installing sd-scripts {commit} into {root} (once per commit)...")
        full_sha = _checkout(git, repo_url, commit, repo, echo)
        _make_venv(venv)
        _pip_install(venv, repo, pins, echo)
        verify_sd_scripts(repo)
        marker.write_text(json.dumps(_marker_data(commit, full_sha, repo, pins), indent=2))
        echo(f"sd-scripts {full_sha[:10]} ready.")
    return repo


def source_url() -> str:
    """Where to clone from: $ANIMA_SD_SCRIPTS_DIR (a local git clone) when set, else GitHub.

    Raises:
        SdScriptsInstallError: the variable names a folder that is not a git clone.
    """
    local = os.environ.get(LOCAL_CHECKOUT_ENV, "").strip()
    if not local:
        return SD_SCRIPTS_URL
    path = Path(local).expanduser().resolve()
    if not (path / ".git").exists():
        raise SdScriptsInstallError(
            f"{LOCAL_CHECKOUT_ENV}={local} is not a git clone of sd-scripts; clone it with "
            f"`git clone {SD_SCRIPTS_URL} {local}` or unset {LOCAL_CHECKOUT_ENV} to clone from GitHub"
        )
    return str(path)


def require_git() -> str:
    """Path of git, or a clear error naming the fix."""
    git = shutil.which("git")
    if git is None:
        raise SdScriptsInstallError("git is not installed: apt-get install git")
    return git


def check_reachable(repo_url: str, timeout_s: float = 10) -> None:
    """Fail fast with the host's name when an http(s) remote cannot be reached."""
    parsed = urlparse(repo_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise SdScriptsInstallError(f"cannot reach {parsed.hostname}: {e} (check the network connection)") from e


def verify_sd_scripts(sd_scripts_dir: str | Path) -> None:
    """Import the Anima modules with the checkout's venv; raise with its error output otherwise."""
    code = "import " + ", ".join(ANIMA_MODULES)
    out = _run([str(venv_python(sd_scripts_dir)), "-c", code], cwd=sd_scripts_dir, timeout=600)
    if out.returncode != 0:
        raise SdScriptsInstallError(
            f"sd-scripts is installed but its Anima modules do not import ({_last_lines(out.stderr)}); "
            f"delete {Path(sd_scripts_dir).parent} to reinstall, or pick another sd_scripts_commit"
        )


def torch_pins() -> list[str]:
    """pip arguments that give the venv this environment's torch (same CUDA build, no surprise upgrade)."""
    pins, index = [], None
    for name in ("torch", "torchvision"):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        pins.append(f"{name}=={version}")
        if "+" in version and version.split("+", 1)[1].startswith("cu"):
            index = f"https://download.pytorch.org/whl/{version.split('+', 1)[1]}"
    return pins + (["--extra-index-url", index] if index else [])


@contextlib.contextmanager
def _locked(path: Path):
    """One installer per cache folder at a time (two notebooks may start together)."""
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: str | Path | None = None, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, errors="replace", timeout=timeout)


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no output"


def _requirements_hash(repo: Path, pins: list[str]) -> str:
    req = repo / "requirements.txt"
    data = req.read_bytes() if req.is_file() else b""
    return hashlib.sha256(data + json.dumps(pins).encode()).hexdigest()[:16]


def _marker_data(commit: str, full_sha: str, repo: Path, pins: list[str]) -> dict:
    return {"commit": commit, "sha": full_sha, "requirements": _requirements_hash(repo, pins), "torch": pins}


def _marker_matches(marker: Path, commit: str, repo: Path, venv: Path, pins: list[str]) -> bool:
    if not (marker.is_file() and repo.is_dir() and (venv / "bin" / "python").exists()):
        return False
    try:
        data = json.loads(marker.read_text())
    except ValueError:
        return False
    return data.get("commit") == commit and data.get("requirements") == _requirements_hash(repo, pins)


def _checkout(git: str, repo_url: str, commit: str, repo: Path, echo=print) -> str:
    """Fresh clone at `commit` (a stale or half-made checkout is replaced). Returns the full sha."""
    check_reachable(repo_url)
    partial = repo.with_name(repo.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # A partial clone of a local folder would have to fetch blobs from it later, which git refuses
    # when that folder is itself incomplete; a plain local clone hardlinks the objects anyway.
    local = Path(repo_url).is_dir()
    filters = [] if local else ["--filter=blob:none"]
    out = _run([git, "clone", "--no-checkout", *filters, "--quiet", repo_url, str(partial)])
    if out.returncode != 0:
        host = urlparse(repo_url).hostname or repo_url
        if any(marker in out.stderr.lower() for marker in _NETWORK_ERRORS):
            raise SdScriptsInstallError(f"cannot reach {host}: {_last_lines(out.stderr, 1)}")
        raise SdScriptsInstallError(f"git clone of {repo_url} failed: {_last_lines(out.stderr)}")
    out = _run([git, "-C", str(partial), "checkout", "--quiet", "--detach", commit])
    if out.returncode != 0:
        raise SdScriptsInstallError(
            f"sd-scripts commit {commit!r} not found in {repo_url} ({_last_lines(out.stderr, 1)}); "
            "set sd_scripts_commit to a commit of kohya-ss/sd-scripts"
        )
    sha = _run([git, "-C", str(partial), "rev-parse", "HEAD"]).stdout.strip()
    if local:  # a copied clone may lack some large files; say which, since a missing one fails later
        status = _run([git, "-C", str(partial), "status", "--porcelain"]).stdout.splitlines()
        if missing := [line[3:] for line in status if line.startswith(" D ")]:
            echo(f"warning: {repo_url} lacks {len(missing)} file(s) of {sha[:10]}: {', '.join(missing)}")
    shutil.rmtree(repo, ignore_errors=True)
    partial.rename(repo)
    return sha


def _make_venv(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)  # a venv of an older requirements set is rebuilt
    out = _run([sys.executable, "-m", "venv", str(venv)], timeout=600)
    if out.returncode != 0:
        raise SdScriptsInstallError(
            f"could not create a venv for sd-scripts ({_last_lines(out.stderr)}): apt-get install python3-venv"
        )


def _pip_install(venv: Path, repo: Path, pins: list[str], echo) -> None:
    """torch first (pinned to ours), then sd-scripts' requirements; cwd is the checkout for its `-e .`."""
    python = str(venv / "bin" / "python")
    steps = []
    if any(not p.startswith("--") for p in pins):
        steps.append(pins)
    req = repo / "requirements.txt"
    wanted = [line for line in (req.read_text().splitlines() if req.is_file() else []) if line.strip()]
    if any(not line.lstrip().startswith("#") for line in wanted):
        steps.append(["-r", "requirements.txt"])
    for args in steps:
        echo(f"pip install {' '.join(args)}")
        out = _run([python, "-m", "pip", "install", "--quiet", *args], cwd=repo)
        if out.returncode != 0:
            what = " ".join(args)
            raise SdScriptsInstallError(f"pip install {what} failed for sd-scripts: {_last_lines(out.stderr)}")
