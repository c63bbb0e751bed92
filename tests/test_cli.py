"""The CLI a newcomer meets: help, exit codes, one-line reasons for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anima_lora_flow.cli import main


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_commands(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for command in ("train", "validate", "plan", "models", "demo", "status", "doctor", "ui"):
        assert command in out


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "anima-lora"
    assert exe.exists() or shutil.which("anima-lora")
    proc = subprocess.run([str(exe) if exe.exists() else "anima-lora", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "resumable Prefect flow" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train"], "no dataset given"),
        (["train", "--dataset", "x", "--network-dim", "0"], "--network-dim"),
        (["train", "--dataset", "x", "--project-name", "../up"], "--project-name"),
        (["train", "--config", "/no/such/file.toml"], "config file not found"),
        (["status", "nosuch", "--storage", "/no/such/root"], "no project 'nosuch'"),
        (["train", "--dataset", "x", "--storage", "/content/drive/MyDrive/out"], "not Colab"),
        (["train", "--dataset", "x", "--storage", "nosuchproto://bucket/x"], "cannot open storage"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, fragment, capsys):
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert fragment in err
    assert err.startswith("error: ") and err.strip().count("\n") == 0


def test_unknown_flag_exits_2(capsys):
    code, _, err = _run(["train", "--no-such-flag"], capsys)
    assert code == 2 and "unrecognized arguments" in err


def test_config_file_and_flags(tmp_path):
    from anima_lora_flow.cli import build_parser, config_from_args

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('dataset = "/d"\nnetwork_dim = 8\nrepeats = 3\n')
    args = build_parser().parse_args(["train", "--config", str(cfg_file), "--repeats", "7", "--no-gradient-checkpointing"])
    cfg = config_from_args(args)
    assert (cfg.dataset, cfg.network_dim, cfg.repeats, cfg.gradient_checkpointing) == ("/d", 8, 7, False)


def test_demo_rejects_zero_epochs(capsys):
    code, _, err = _run(["demo", "--epochs", "0"], capsys)
    assert code == 2 and "must be 1 or more" in err
