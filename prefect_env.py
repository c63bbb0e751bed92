"""Prefect settings that must be in place before `import prefect` (it reads them at import time)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .config import cache_root
from .platforms.secrets import secret
from .storage.drive import is_drive_path


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
    Path(env["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    return {k: env[k] for k in (*applied, "PREFECT_HOME") if k != "PREFECT_API_KEY"}
