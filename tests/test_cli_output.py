"""What every command shows a user: the version, a speed for every listed GPU, install hints as the README gives them."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from package_sources import package_modules

from anima_lora_flow.cli import main
from anima_lora_flow.demo import make_demo_dataset
from anima_lora_flow.planner.gpus import GPU_SPECS

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data") / "dataset")


def test_version_prints_the_installed_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"anima-lora {version('anima-lora-flow')}"


@pytest.mark.parametrize("gpu", [spec.name for spec in GPU_SPECS if spec.name != "P100"])  # a P100 plan is refused
def test_plan_for_every_listed_gpu_has_a_speed_row(gpu, dataset, tmp_path, capsys):
    code = main(["plan", str(dataset), "--gpu", gpu, "--work-dir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert code == 0, out
    speed = next(line for line in out.splitlines() if line.strip().startswith("Speed"))
    assert re.search(r"Speed\s+[\d.]+ s/step \((measured|estimated)\)", speed), speed
    assert "not in the speed table" not in out


@pytest.mark.parametrize("url", ["gs://bucket/runs", "s3://bucket/runs"])
def test_install_hints_are_the_readme_install_lines(url):
    from anima_lora_flow.storage.location import install_hint

    command = install_hint(url).split("install it with: ", 1)[1]
    assert f"`{command}`" in README.read_text(), command


def test_adamw8bit_hint_is_the_readme_install_line():
    from anima_lora_flow.planner.preflight import BNB_INSTALL

    assert f"`{BNB_INSTALL}`" in README.read_text()


def test_no_hint_installs_this_package_from_an_index():
    """The package is installed from a checkout or git (README); `pip install anima-lora-flow[x]` asks PyPI."""
    root = README.parent
    hints = [f"{path.relative_to(root)}: {line.strip()}"
             for path in [*package_modules(root), *sorted((root / "bench").rglob("*.py"))]
             for line in path.read_text(errors="replace").splitlines()
             if re.search(r"pip install ['\"]?anima-lora-flow\[", line) and not line.lstrip().startswith("#")]
    assert hints == []
    assert not re.search(r"pip install ['\"]?anima-lora-flow\[", README.read_text())
