"""The backends by name: a config's `trainer` looked up in core/backends.py's table.

A third backend is one new module implementing trainer/backend.py's Backend protocol and one line in
core/backends.py's TABLE; this module imports a backend's module only when it is first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from ..core.backends import NAMES, facts
from .backend import Backend

_PACKAGE = __package__.rsplit(".", 1)[0]  # anima_lora_flow


class _Backends(Mapping[str, Backend]):
    """name -> Backend instance, each made on first use (a backend's module may import heavy libraries)."""

    def __init__(self) -> None:
        self._made: dict[str, Backend] = {}

    def __getitem__(self, name: str) -> Backend:
        if name not in self._made:
            module, _, cls = facts(name).implementation.partition(":")
            self._made[name] = getattr(importlib.import_module(f"{_PACKAGE}.{module}"), cls)()
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


BACKENDS: Mapping[str, Backend] = _Backends()


def backend_for(name: str) -> Backend:
    """The backend a config's `trainer` names.

    Raises:
        KeyError: no backend of that name (config validation admits only registered names).
    """
    return BACKENDS[name]
