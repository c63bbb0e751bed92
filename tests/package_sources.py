"""The package's own source files, for the tests that read the code (layers, error wording, backend names).

A file belongs to the package when every folder from the repository root down to it holds an
__init__.py. That leaves out tests/, bench/, and what an install writes into the root (build/, a
virtual environment, *.egg-info): CI's `pip install .` puts a second copy of the package in build/lib.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_modules(root: Path = ROOT) -> list[Path]:
    found = sorted(root.glob("*.py"))
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        if here != root and not (here / "__init__.py").is_file():
            subfolders[:] = []  # not a package folder: nothing below it is the package either
            continue
        subfolders[:] = [name for name in subfolders if (here / name / "__init__.py").is_file()]
        if here != root:
            found += sorted(here / name for name in files if name.endswith(".py"))
    return sorted(found)
