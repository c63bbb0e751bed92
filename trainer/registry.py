"""The backends by name: the one place a config's `trainer` is looked up.

A third backend is one new module implementing trainer/backend.py's Backend protocol, and one line
in BACKENDS below (and its name in config.TrainerBackend, the setting's choices).
"""

from __future__ import annotations

from .backend import Backend
from .native import NativeBackend
from .sdscripts.backend import SdScriptsBackend

BACKENDS: dict[str, Backend] = {
    NativeBackend.name: NativeBackend(),
    SdScriptsBackend.name: SdScriptsBackend(),
}


def backend_for(name: str) -> Backend:
    """The backend a config's `trainer` names.

    Raises:
        KeyError: no backend of that name (config validation admits only registered names).
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise KeyError(f"no training backend named {name!r}; known: {', '.join(BACKENDS)}") from None
