"""Every package folder is in the wheel: a plain `pip install .` (not editable) must ship them all."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"anima_lora_flow"} | {
        "anima_lora_flow." + ".".join(init.parent.relative_to(ROOT).parts)
        for init in ROOT.glob("**/__init__.py")
        if init.parent != ROOT and not {"tests", "bench", "notebooks", "build", "dist"} & set(init.parent.relative_to(ROOT).parts)
        and not any(part.startswith(".") or part.endswith("venv") for part in init.parent.relative_to(ROOT).parts)
    }
    assert found == listed
