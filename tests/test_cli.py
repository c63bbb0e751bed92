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
    assert code == 2 and "--epochs: must be a whole number of 1 or more, got '0'" in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--betas", "2", "3"], "--betas: each Adam beta must be at least 0 and below 1"),
        (["--seed", "99999999999999999999"], "--seed: Input should be less than or equal to 4294967295"),
        (["--attention-backend", "bogus"], "--attention-backend: unknown attention backend 'bogus'; use native, or one of:"),
        (["--timestep-sampling", "flux_shift"], "not built yet: --timestep-sampling flux_shift"),
    ],
)
def test_settings_that_would_fail_in_training_are_refused_by_plan_with_exit_2(tmp_path, capsys, flags, says):
    # Found by a new-user test: these passed `plan` and failed only at training step 0, after the download.
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "a.txt").write_text("1girl")
    from PIL import Image

    Image.new("RGB", (512, 512)).save(folder / "a.png")
    assert main(["plan", str(folder), "--work-dir", str(tmp_path / "w"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and "Value error" not in err


def test_help_shows_no_pydantic_placeholder(capsys):
    assert main(["train", "--help"]) == 0
    assert "PydanticUndefined" not in capsys.readouterr().out


def test_storage_that_is_a_file_is_refused_before_anything_starts(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    code = main(["train", "--dataset", str(tmp_path), "--storage", str(a_file), "--work-dir", str(tmp_path / "w")])
    assert code == 2 and f"{a_file} is a file, not a folder; pass a folder" in capsys.readouterr().err


def test_dry_run_prints_the_plan_table(capsys):
    from anima_lora_flow.cli import _print_result
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.planner.plan import make_plan
    from anima_lora_flow.platforms.detect import detect_platform

    config = TrainingConfig(dataset="d")
    plan = make_plan(config, {(768, 768): 30}, detect_platform({}, gpu=lambda: None), gpu="T4")
    _print_result(config, {"outcome": "dry-run", "run_id": "r", "trainable_images": 30,
                           "plan": plan.model_dump(mode="json")}, as_json=False)  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("Plan for my_lora") and "Steps     300 (" in out and "Decision" in out
