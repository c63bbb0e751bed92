"""Slow tests here (the rehearsal) run only when asked: `python -m pytest -m slow tests/bench`.

The `slow` marker alone deselects nothing (pyproject only declares it), and CI runs a plain
`python -m pytest -q`; so unless `-m` names `slow`, they are skipped with that command as the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with `python -m pytest -m slow tests/bench`")
    for item in items:
        if "slow" in item.keywords and _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)
