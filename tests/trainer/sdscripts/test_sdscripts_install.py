"""The sd-scripts installer with real git, venv and subprocesses (a local repo stands in for GitHub)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anima_lora_flow.trainer.sdscripts.install import (
    SdScriptsInstallError,
    accelerate_executable,
    ensure_sd_scripts,
    venv_python,
)


def test_error_when_git_is_missing(tmp_path):
    """A real interpreter run with a PATH that has no git."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    code = (
        "from anima_lora_flow.trainer.sdscripts.install import ensure_sd_scripts\n"
        f"ensure_sd_scripts('48d368fa', {str(tmp_path / 'cache')!r})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": str(empty_bin)}, capture_output=True, text=True)
    assert out.returncode != 0
    assert "SdScriptsInstallError: git is not installed: apt-get install git" in out.stderr


def test_error_when_the_host_is_unreachable(tmp_path):
    with pytest.raises(SdScriptsInstallError, match=r"cannot reach 127\.0\.0\.1: "):
        ensure_sd_scripts("48d368fa", tmp_path, repo_url="https://127.0.0.1:9/kohya-ss/sd-scripts.git", echo=lambda *_: None)


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture
def fake_sd_scripts(tmp_path) -> tuple[Path, str]:
    """A git repo with sd-scripts' Anima module layout and no third-party requirements."""
    repo = tmp_path / "upstream"
    (repo / "library").mkdir(parents=True)
    (repo / "networks").mkdir()
    (repo / "library" / "__init__.py").write_text("")
    (repo / "library" / "anima_utils.py").write_text("DIT = 'anima'\n")
    (repo / "networks" / "__init__.py").write_text("")
    (repo / "networks" / "lora_anima.py").write_text("from library.anima_utils import DIT\n")
    (repo / "anima_train_network.py").write_text("print('train')\n")
    (repo / "requirements.txt").write_text("# pinned elsewhere\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "anima")
    return repo, _git(repo, "rev-parse", "HEAD")


def test_installs_once_and_is_cached(tmp_path, fake_sd_scripts):
    repo_url, sha = fake_sd_scripts
    said = []
    checkout = ensure_sd_scripts(sha[:8], tmp_path / "cache", repo_url=str(repo_url), pin_torch=False, echo=said.append)
    assert (checkout / "anima_train_network.py").is_file()
    assert venv_python(checkout).exists() and accelerate_executable(checkout).parent == venv_python(checkout).parent
    marker = json.loads((checkout.parent / "installed.json").read_text())
    assert marker["commit"] == sha[:8] and marker["sha"] == sha
    assert any("Installing sd-scripts" in s for s in said)

    said.clear()
    again = ensure_sd_scripts(sha[:8], tmp_path / "cache", repo_url=str(repo_url), pin_torch=False, echo=said.append)
    assert again == checkout and said == []  # cached: nothing cloned or installed


def test_unknown_commit_names_the_setting(tmp_path, fake_sd_scripts):
    repo_url, _ = fake_sd_scripts
    with pytest.raises(SdScriptsInstallError, match="commit 'deadbeef' not found.*sd_scripts_commit"):
        ensure_sd_scripts("deadbeef", tmp_path / "cache", repo_url=str(repo_url), pin_torch=False, echo=lambda *_: None)


def test_broken_anima_modules_fail_verification(tmp_path, fake_sd_scripts):
    repo, _ = fake_sd_scripts
    (repo / "networks" / "lora_anima.py").write_text("import no_such_module\n")
    _git(repo, "commit", "-qam", "break")
    sha = _git(repo, "rev-parse", "HEAD")
    with pytest.raises(SdScriptsInstallError, match="Anima modules do not import.*no_such_module"):
        ensure_sd_scripts(sha, tmp_path / "cache", repo_url=str(repo), pin_torch=False, echo=lambda *_: None)
    assert not (tmp_path / "cache" / f"sd-scripts-{sha}" / "installed.json").exists()


def test_the_local_checkout_variable_is_the_default_source(tmp_path, fake_sd_scripts, monkeypatch):
    """$ANIMA_SD_SCRIPTS_DIR names a local clone: no network, same pinned commit and venv."""
    repo, sha = fake_sd_scripts
    monkeypatch.setenv("ANIMA_SD_SCRIPTS_DIR", str(repo))
    checkout = ensure_sd_scripts(sha[:8], tmp_path / "cache", pin_torch=False, echo=lambda *_: None)
    assert json.loads((checkout.parent / "installed.json").read_text())["sha"] == sha
    assert (checkout / "networks" / "lora_anima.py").is_file()


def test_a_local_clone_missing_a_large_file_installs_and_names_it(tmp_path, fake_sd_scripts, monkeypatch):
    """A copied clone may lack blobs (big binaries left out); a partial clone of it failed with 'not found'."""
    repo, _ = fake_sd_scripts
    (repo / "big.dll").write_bytes(b"\0" * 1000)
    _git(repo, "add", "big.dll")
    _git(repo, "commit", "-qm", "binary")
    sha = _git(repo, "rev-parse", "HEAD")
    blob = _git(repo, "rev-parse", "HEAD:big.dll")
    (repo / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    (repo / "big.dll").unlink()
    monkeypatch.setenv("ANIMA_SD_SCRIPTS_DIR", str(repo))
    said = []
    checkout = ensure_sd_scripts(sha, tmp_path / "cache", pin_torch=False, echo=said.append)
    assert (checkout / "anima_train_network.py").is_file()
    assert any("lacks 1 file(s)" in s and "big.dll" in s for s in said)


def test_a_local_checkout_variable_that_is_no_clone_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMA_SD_SCRIPTS_DIR", str(tmp_path))
    with pytest.raises(SdScriptsInstallError, match="ANIMA_SD_SCRIPTS_DIR=.* is not a git clone"):
        ensure_sd_scripts("48d368fa", tmp_path / "cache", pin_torch=False, echo=lambda *_: None)
