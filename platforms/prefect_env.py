"""Prefect settings that must be in place before `import prefect` (it reads them at import time).

The user's own Prefect configuration is used as it is: PREFECT_API_URL in the environment, or the
active profile of profiles.toml (`prefect config set PREFECT_API_URL=...`, `prefect cloud login`).
PREFECT_HOME moves only when it would put Prefect's SQLite database on Google Drive or another
network or FUSE mount, where SQLite's WAL mode is unsafe (prefect.md §1); the profiles file there is
still read. With no API configured, each command runs a temporary local server whose database lives
in PREFECT_HOME, so `anima-lora ui` shows the history of every run afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..config import cache_root
from ..core.processes import pid_alive
from ..errors import UserInputError
from ..storage.drive import is_drive_path
from ..storage.location import ensure_cache_folder, ensure_local_folder
from .secrets import secret

DEFAULT_PREFECT_HOME = "~/.prefect"  # Prefect's own default (settings `home`)
# Filesystems where SQLite's locking and shared memory cannot be trusted; any FUSE mount counts too
# (Colab's Drive, gcsfuse, s3fs, rclone, sshfs).
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "davfs", "lustre", "gpfs", "beegfs"}
)


@dataclass(frozen=True)
class ApiConfig:
    """The Prefect API a user configured, and where it was configured ("PREFECT_API_URL", a profile, a secret)."""

    url: str
    key: str | None
    source: str

    @property
    def is_cloud(self) -> bool:
        return "api.prefect.cloud" in self.url

    @property
    def where(self) -> str:
        return "Prefect Cloud" if self.is_cloud else self.url


def prefect_home_of(env: dict[str, str] | None = None) -> Path:
    """PREFECT_HOME as Prefect resolves it from the environment (its default is ~/.prefect)."""
    env = os.environ if env is None else env
    return Path(env.get("PREFECT_HOME") or DEFAULT_PREFECT_HOME).expanduser().absolute()


def network_mount(path: str | Path) -> str | None:
    """What kind of network or FUSE mount holds `path` ("Google Drive", "nfs4", "fuse.rclone"), or None."""
    path = Path(path).expanduser().absolute()
    if is_drive_path(str(path)):
        return "Google Drive"
    try:
        import psutil  # noqa: PLC0415 - installed with accelerate; only this check needs it

        partitions = psutil.disk_partitions(all=True)
    except Exception:  # noqa: BLE001 - no mount table to read (a sandbox): treat the disk as local
        return None
    holders = [p for p in partitions if path.is_relative_to(p.mountpoint)]
    if not holders:
        return None
    fstype = max(holders, key=lambda p: len(p.mountpoint)).fstype.lower()
    return fstype if fstype.startswith("fuse") or fstype in NETWORK_FILESYSTEMS else None


def active_profile(env: dict[str, str] | None = None) -> tuple[str, dict[str, str], Path]:
    """(name, settings, file) of the active Prefect profile, read as Prefect reads it: PREFECT_PROFILES_PATH
    or PREFECT_HOME/profiles.toml, the profile named by PREFECT_PROFILE or the file's `active` key.
    Empty settings when there is no such file or profile. Read without importing prefect, which would
    fix its settings before this package has set them."""
    env = os.environ if env is None else env
    path = Path(env.get("PREFECT_PROFILES_PATH") or prefect_home_of(env) / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    name = env.get("PREFECT_PROFILE") or str(data.get("active") or "ephemeral")
    settings = (data.get("profiles") or {}).get(name) or {}
    return name, {str(k): str(v) for k, v in settings.items() if isinstance(k, str)}, path


def configured_api(env: dict[str, str] | None = None) -> ApiConfig | None:
    """The Prefect API the user configured: PREFECT_API_URL in the environment, else the active profile's,
    else a Colab/Kaggle secret; None when there is none (each command then runs a temporary local server)."""
    env = os.environ if env is None else env
    if env.get("PREFECT_API_URL"):
        return ApiConfig(env["PREFECT_API_URL"], env.get("PREFECT_API_KEY") or None, "PREFECT_API_URL")
    name, settings, path = active_profile(env)
    if settings.get("PREFECT_API_URL"):
        key = env.get("PREFECT_API_KEY") or settings.get("PREFECT_API_KEY") or None
        return ApiConfig(settings["PREFECT_API_URL"], key, f"Prefect profile '{name}' ({path})")
    url = secret("PREFECT_API_URL", env)
    if url:
        return ApiConfig(url, secret("PREFECT_API_KEY", env), "the PREFECT_API_URL secret")
    return None


@dataclass(frozen=True)
class History:
    """Where a command's run history (flow run, task runs, logs, events, artifacts) is kept, and how to see it."""

    ui_url: str | None  # a UI that outlives the command: `anima-lora ui`'s, or the user's own server or Cloud
    home: Path | None = None  # the PREFECT_HOME of a temporary server's database (no UI of its own)
    api_url: str | None = None  # the API this command's flow reports to

    def describe(self, flow_run_id: str | None = None) -> str:
        """One line for the end of a run and for `doctor`."""
        if self.ui_url:
            page = f"{self.ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if flow_run_id else f"{self.ui_url.rstrip('/')}/runs"
            return f"run history: {page}"
        if self.home is not None:
            return (f"run history: the Prefect database in {self.home} (flow runs, task runs, logs, artifacts); "
                    "open it with `anima-lora ui`")
        return "run history: the Prefect API this process was already using"


def user_history(api) -> History:
    """The history of runs that report to a Prefect API the user configured (an `ApiConfig`)."""
    return History(ui_url=_ui_url_of(api.url), api_url=api.url)


def _ui_url_of(api_url: str) -> str:
    """The UI of a Prefect API URL, as Prefect itself derives it (settings `ui_url`): Cloud's app pages,
    or a server's root."""
    ui_url = api_url.rstrip("/")
    if "api.prefect.cloud" in ui_url:
        ui_url = ui_url.replace("https://api.", "https://app.", 1).replace("/api/accounts/", "/account/")
        return ui_url.replace("/workspaces/", "/workspace/")
    return ui_url.removesuffix("/api")


UI_PID_FILE = "anima-ui-server.json"  # `anima-lora ui`'s record; not Prefect's own server.pid (`prefect server start -b`)


def ui_server_record(home: Path, *, reap=None) -> dict | None:
    """The record of the `anima-lora ui` server in PREFECT_HOME `home` when its process is alive and is a
    Prefect server; None for none or a stale file. `reap(pid)` first collects it if it is our own exited child."""
    try:
        record = json.loads((Path(home) / UI_PID_FILE).read_text(encoding="utf-8"))
        pid, port = int(record["pid"]), int(record["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if reap is not None:
        reap(pid)
    if not _is_prefect_server(pid):
        return None
    return {**record, "pid": pid, "port": port}


def _is_prefect_server(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    # A pid from an old session may belong to another program now; check what it runs where we can.
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"prefect" in b" ".join(args) and b"server" in args


def running_ui_history(home: Path) -> History | None:
    """The history of runs reporting to a running `anima-lora ui` server, or None when none runs."""
    record = ui_server_record(home)
    if record is None:
        return None
    host = record.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return History(ui_url=record.get("ui_url") or f"http://{host}:{record['port']}", api_url=f"http://{host}:{record['port']}/api")


def configure_prefect_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """A 90 s server start timeout and analytics off; PREFECT_HOME moved off a network mount; the user's API kept.

    Returns the settings in effect (PREFECT_HOME always among them, moved or not), for `ui`, `doctor`
    and the tests.
    """
    env = os.environ if env is None else env
    applied: dict[str, str] = {}
    home = prefect_home_of(env)
    mount = network_mount(home)
    if mount:
        local = cache_root() / "prefect"
        print(f"warning: PREFECT_HOME {home} is on {mount}, where Prefect's SQLite database is unsafe; "
              f"keeping run history in {local} instead", file=sys.stderr)
        applied["PREFECT_HOME"] = str(local)
        if not env.get("PREFECT_PROFILES_PATH") and (home / "profiles.toml").is_file():
            applied["PREFECT_PROFILES_PATH"] = str(home / "profiles.toml")  # the user's profiles still count
    applied.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    applied.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    applied.setdefault("DO_NOT_TRACK", "1")
    # Prefect Cloud from Colab/Kaggle secrets keeps run history across sessions (the key is never printed).
    api = configured_api(env)
    if api is not None and api.source == "the PREFECT_API_URL secret":
        applied["PREFECT_API_URL"] = api.url
        if api.key:
            applied["PREFECT_API_KEY"] = api.key
    for key, value in applied.items():
        if key == "PREFECT_HOME" or key not in env:
            env[key] = value
    # Prefect creates PREFECT_HOME but not its parents; a missing parent means no database at all.
    if "PREFECT_HOME" in applied:
        ensure_cache_folder(env["PREFECT_HOME"])
        reported = env["PREFECT_HOME"]
    else:
        fix = ("set PREFECT_HOME to a writable folder, or unset it" if env.get("PREFECT_HOME")
               else f"it is Prefect's default under HOME={Path.home()}: set PREFECT_HOME to a writable folder")
        reported = str(ensure_local_folder(home, "PREFECT_HOME", fix=fix))
    return {**{k: env[k] for k in applied if k not in ("PREFECT_API_KEY", "PREFECT_HOME")}, "PREFECT_HOME": reported}


API_CHECK_TIMEOUT_S = 5.0


def api_problem(url: str, key: str | None = None, *, timeout_s: float = API_CHECK_TIMEOUT_S) -> str | None:
    """Why the Prefect API at `url` cannot serve a run (a phrase), or None when its /health answers.

    The same endpoint the Prefect client polls; any HTTP answer other than 200 is a problem too
    (401/403: the key; 404: not a Prefect API URL).
    """
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from ..storage.location import unreachable_reason  # noqa: PLC0415

    if not url.lower().startswith(("http://", "https://")):
        return "is not an http(s) URL"
    request = urllib.request.Request(url.rstrip("/") + "/health")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"answered HTTP {exc.code} (not allowed): check PREFECT_API_KEY"
        if exc.code == 404:
            return "answered HTTP 404 at /health: a Prefect API URL ends in /api (for a local server http://127.0.0.1:4200/api)"
        return f"answered HTTP {exc.code} at /health"
    except (OSError, ValueError) as exc:  # URLError is an OSError; a malformed URL is a ValueError
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            return f"did not answer within {timeout_s:g} s"
        return unreachable_reason(url, exc) or f"cannot be reached ({getattr(exc, 'reason', None) or exc})"


def check_api_reachable(env: dict[str, str] | None = None) -> None:
    """Refuse a configured Prefect API (environment, profile or secret) that does not answer, before a
    run depends on it.

    Raises:
        UserInputError: one line with the URL, where it was configured, why, and the fix.
    """
    api = configured_api(env)
    if api is None:
        return  # a temporary local server is started for the run
    problem = api_problem(api.url, api.key)
    if problem:
        origin = "" if api.source == "PREFECT_API_URL" else f" (from {api.source})"
        raise UserInputError(
            f"PREFECT_API_URL {api.url}{origin}: {problem}; start that server (`anima-lora ui`), correct "
            "PREFECT_API_URL, or unset it to run against a temporary local server"
        )
