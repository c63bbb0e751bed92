"""The import rule, checked on the source: each package imports only itself and the layers below it.

Layers, top to bottom (README, Layout): the edges (cli.py, demo.py; the notebooks import flows), flows/,
tasks/, then ui/, runner/, dataset/, planner/, models/, platforms/, storage/ in that order, then trainer/,
then the core (effective.py, config.py, core/, errors.py, the package's __init__). A module may import
its own package and any package below it, never one above: so no cycle between packages either.
trainer/ and everything below tasks/ never import Prefect, except the modules in PREFECT_FEATURES.
Lazy imports inside functions and `if TYPE_CHECKING:` imports count the same as the others.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = "anima_lora_flow"
ROOT = Path(__file__).parents[1]

LAYERS = [
    "cli", "demo",
    "flows",
    "tasks",
    "ui", "runner", "dataset", "planner", "models", "platforms", "storage",
    "trainer",
    "effective", "config", "core", "errors", "",  # "": the package's own __init__ (__version__)
]
# Below tasks/ these modules import Prefect because they are Prefect features, not a step of the work.
PREFECT_FEATURES = {
    "ui/server.py": "starts and stops Prefect's own server (`anima-lora ui`)",
    "ui/notify.py": "creates a Prefect automation and a Webhook block (`anima-lora notify`)",
    "ui/console.py": "filters Prefect's console log handler (the quiet console)",
    "ui/prefect_progress.py": "the training progress as a Prefect progress artifact and run-log lines",
}
NO_PREFECT_EVER = ("trainer",)
NOT_PACKAGE = {"tests", "bench", "notebooks", "deploy", "build", "dist"}


def package_modules(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.py")
        if not NOT_PACKAGE & set(p.relative_to(root).parts[:1])
        and not any(part.startswith(".") or part.endswith("venv") or part.endswith(".egg-info") for part in p.relative_to(root).parts)
    )


def unit_of(parts: list[str], root: Path) -> str:
    """The layer unit of a module path inside the package (parts after the package name)."""
    if not parts or parts[0] == "__init__":
        return ""
    head = parts[0]
    if (root / head).is_dir() or (root / f"{head}.py").is_file():
        return head
    return ""  # a name of the package's __init__ (`from . import __version__`)


def imports_of(path: Path, root: Path, package: str) -> list[tuple[int, list[str]]]:
    """(line, module parts below the package) of every import of the package itself, and ["prefect"] marks."""
    rel = path.relative_to(root)
    here = [package, *rel.parent.parts]  # the module's package, for relative imports
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            # `from .. import errors`: the names are modules when the base is the package itself
            targets = [module + [alias.name] for alias in node.names] if module == [package] else [module]
        else:
            continue
        for target in targets:
            if target[0] == "prefect":
                found.append((node.lineno, ["prefect"]))
            elif target[0] == package:
                found.append((node.lineno, target[1:]))
    return found


def violations(root: Path, package: str = PACKAGE, layers: list[str] = LAYERS,
               prefect_features: dict[str, str] = PREFECT_FEATURES, no_prefect_ever=NO_PREFECT_EVER) -> list[str]:
    """Every break of the rule in the package at `root`, one line each (empty: the rule holds)."""
    rank = {unit: i for i, unit in enumerate(layers)}
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in package_modules(root):
        rel = path.relative_to(root)
        name = rel.as_posix()
        importer = unit_of(list(rel.with_suffix("").parts), root)
        if importer not in rank:
            problems.append(f"{name}: its package {importer!r} has no place in LAYERS; add it where it belongs")
            continue
        for line, target in imports_of(path, root, package):
            if target == ["prefect"]:
                below_tasks = rank[importer] > rank["tasks"]
                if importer in no_prefect_ever or (below_tasks and name not in prefect_features):
                    problems.append(f"{name}:{line}: imports prefect below tasks/")
                continue
            imported = unit_of(target, root)
            if imported == importer:
                continue
            graph.setdefault(importer, set()).add(imported)
            if imported not in rank:
                problems.append(f"{name}:{line}: imports {'.'.join(target)}, whose package has no place in LAYERS")
            elif rank[imported] < rank[importer]:
                problems.append(f"{name}:{line}: {importer or package} imports {'.'.join(target)}, a layer above it")
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        problems.append(f"packages import each other in a cycle: {' -> '.join(exc.args[1])}")
    return problems


def test_every_import_goes_down_the_layers():
    assert violations(ROOT) == []


def test_the_prefect_features_below_tasks_exist():
    for name in PREFECT_FEATURES:
        assert (ROOT / name).is_file(), f"{name} is listed in PREFECT_FEATURES but does not exist"
        assert not name.startswith(NO_PREFECT_EVER)


def test_imports_inside_the_package_are_relative():
    absolute = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in package_modules(ROOT)
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == PACKAGE)
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names))
    ]
    assert absolute == []


def test_the_readme_layout_table_lists_the_layers_in_order():
    """The Layout table is the rule's documentation: its rows name the packages in LAYERS' order."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n\n", 2)[1]
    named = [
        cell.strip("`").removesuffix("/").removesuffix(".py")
        for row in table.splitlines()[2:]
        for cell in row.split("|")[1].replace(",", " ").split()
    ]
    assert [unit for unit in named if unit in LAYERS] == [unit for unit in LAYERS if unit]
    assert set(named) - set(LAYERS) == {"notebooks", "bench"}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def planted(tmp_path):
    """A small package with the layers top, mid, low and a Prefect feature in mid."""
    return _write(tmp_path / "pkg", {
        "__init__.py": "",
        "top/__init__.py": "", "top/a.py": "from ..mid import m\nimport prefect\n",
        "mid/__init__.py": "", "mid/m.py": "from ..low.x import f\n", "mid/feature.py": "from prefect import flow\n",
        "low/__init__.py": "", "low/x.py": "def f():\n    pass\n",
    })


LAYERS_PLANTED = ["top", "tasks", "mid", "low", ""]


def test_a_clean_tree_passes(planted):
    assert violations(planted, "pkg", LAYERS_PLANTED, {"mid/feature.py": "a Prefect feature"}, ("low",)) == []


def test_the_checker_reports_a_planted_upward_import_and_the_cycle(planted):
    (planted / "low" / "y.py").write_text("def g():\n    from ..mid.m import f  # lazy, still an import\n")
    found = violations(planted, "pkg", LAYERS_PLANTED, {"mid/feature.py": "a Prefect feature"}, ("low",))
    assert any(p.startswith("low/y.py:2: low imports mid.m, a layer above it") for p in found), found
    assert any("cycle" in p and "mid" in p and "low" in p for p in found), found


def test_the_checker_reports_prefect_below_tasks(planted):
    (planted / "low" / "z.py").write_text("import prefect.artifacts\n")
    (planted / "mid" / "n.py").write_text("from prefect import task\n")
    found = violations(planted, "pkg", LAYERS_PLANTED, {"low/z.py": "listed, but low never imports prefect"}, ("low",))
    assert "low/z.py:1: imports prefect below tasks/" in found
    assert "mid/n.py:1: imports prefect below tasks/" in found
    assert "mid/feature.py:1: imports prefect below tasks/" in found  # not listed this time
    assert not any(p.startswith("top/") for p in found)  # above tasks, prefect is fine


def test_the_checker_reports_a_package_without_a_layer(planted):
    _write(planted, {"extra/__init__.py": "", "extra/e.py": "from ..low import x\n"})
    found = violations(planted, "pkg", LAYERS_PLANTED, {"mid/feature.py": "a Prefect feature"}, ("low",))
    assert any(p.startswith("extra/__init__.py") and "no place in LAYERS" in p for p in found), found
