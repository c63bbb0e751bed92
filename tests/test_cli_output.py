"""What every command shows a user: the version, a speed for every listed GPU, install hints as the README gives them."""

from __future__ import annotations

from importlib.metadata import version

from anima_lora_flow.cli import main


def test_version_prints_the_installed_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"anima-lora {version('anima-lora-flow')}"
