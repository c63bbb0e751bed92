"""Prefect settings that must be in place before `import prefect` (it reads them at import time)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import cache_root
from ..errors import UserInputError
from ..storage.drive import is_drive_path
from ..storage.location import ensure_cache_folder, ensure_local_folder
from .secrets import secret


def configure_prefect_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """Local PREFECT_HOME, a 90 s server start timeout, analytics off; a user's API URL is kept.

    Returns the settings in effect (PREFECT_HOME always among them), for `ui`, `doctor` and the tests.
    """
    env = os.environ if env is None else env
    applied: dict[str, str] = {}
    home = env.get("PREFECT_HOME", "")
    # SQLite in WAL mode is unsafe on a network/FUSE mount such as Google Drive (prefect.md §1).
    if not home or is_drive_path(str(Path(home).expanduser().absolute())):
        if home:
            print(
                f"warning: PREFECT_HOME={home} is on Google Drive, where Prefect's SQLite database is unsafe; "
                "using local disk instead",
                file=sys.stderr,
            )
        applied["PREFECT_HOME"] = str(cache_root() / "prefect")
    applied.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    applied.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    applied.setdefault("DO_NOT_TRACK", "1")
    # Prefect Cloud from Colab/Kaggle secrets keeps run history across sessions (the key is never printed).
    if not env.get("PREFECT_API_URL"):
        url, key = secret("PREFECT_API_URL", env), secret("PREFECT_API_KEY", env)
        if url:
            applied["PREFECT_API_URL"] = url
            if key:
                applied["PREFECT_API_KEY"] = key
    for key, value in applied.items():
        if key == "PREFECT_HOME" or key not in env:
            env[key] = value
    # Prefect creates PREFECT_HOME but not its parents; a missing parent means no database at all.
    if "PREFECT_HOME" in applied:
        ensure_cache_folder(env["PREFECT_HOME"])
    else:
        ensure_local_folder(env["PREFECT_HOME"], "PREFECT_HOME", fix="set PREFECT_HOME to a writable folder, or unset it")
    return {k: env[k] for k in (*applied, "PREFECT_HOME") if k != "PREFECT_API_KEY"}


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
    """Refuse a configured PREFECT_API_URL that does not answer, before a run depends on it.

    Raises:
        UserInputError: one line with the URL, why, and the fix.
    """
    env = os.environ if env is None else env
    # Before configure_prefect_environment a Colab/Kaggle secret may still be where the URL is.
    url = env.get("PREFECT_API_URL") or secret("PREFECT_API_URL", env)
    if not url:
        return  # a temporary local server is started for the run
    key = env.get("PREFECT_API_KEY") or (None if env.get("PREFECT_API_URL") else secret("PREFECT_API_KEY", env))
    problem = api_problem(url, key)
    if problem:
        raise UserInputError(
            f"PREFECT_API_URL {url}: {problem}; start that server (`anima-lora ui`), correct PREFECT_API_URL, "
            "or unset it to run against a temporary local server"
        )
