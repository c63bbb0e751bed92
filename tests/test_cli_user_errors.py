"""What a newcomer sees for a mistake: which file or flag is wrong, the right command's usage, one line."""

from __future__ import annotations

import time

import pytest

from anima_lora_flow.cli import main


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _err(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "flags", "says"),
    [
        ('network_dim = "eight"\n', [], "error: cfg.toml: network_dim: Input should be a valid integer"),
        ('network_dim = 0\n', [], "error: cfg.toml: network_dim: Input should be greater than or equal to 1"),
        ('network_dim = 8\n', ["--network-dim", "0"], "error: --network-dim: Input should be greater than or equal to 1"),
        ("network-dim = 8\n", [], "error: cfg.toml: unknown setting 'network-dim'; keys use underscores: network_dim"),
        ("[training]\nnetwork_dim = 8\n", [], "error: cfg.toml: [training] is a table"),
        ("resolution = 512\nmin_bucket_reso = 1024\n", [], "error: --resolution 512 must lie between --min-bucket-reso 1024"),
    ],
)
def test_config_file_errors_name_the_file_or_the_flag(in_tmp, capsys, text, flags, says):
    (in_tmp / "cfg.toml").write_text(text)
    code, err = _err(["train", "--dataset", "d", "--config", "cfg.toml", *flags], capsys)
    assert code == 2 and err.startswith(says) and err.count("\n") == 1


def test_missing_dataset_with_a_config_file_says_where_it_may_go(in_tmp, capsys):
    (in_tmp / "cfg.toml").write_text("network_dim = 8\n")
    code, err = _err(["train", "--config", "cfg.toml"], capsys)
    assert code == 2 and 'or write dataset = "..." in cfg.toml' in err


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["plan", "ds", "--foo", "3"], "usage: anima-lora plan "),
        (["train", "--foo"], "usage: anima-lora train "),
        (["models", "download", "--foo"], "usage: anima-lora models download "),
    ],
)
def test_unknown_flag_shows_the_subcommands_usage(capsys, argv, usage):
    code, err = _err(argv, capsys)
    name = usage.removeprefix("usage: ").strip()
    assert code == 2 and err.startswith(usage)
    assert f"{name}: error: unrecognized arguments: {' '.join(argv[argv.index('--foo'):])}" in err


@pytest.mark.parametrize("port", ["99999", "0", "x"])
def test_ui_port_is_checked_before_anything_starts(capsys, port):
    code, err = _err(["ui", "--port", port], capsys)
    assert code == 2 and f"argument --port: must be a port number from 1 to 65535, got '{port}'" in err


def test_missing_local_dataset_fails_fast_and_says_so_once(tmp_path, capfd, monkeypatch):
    import anima_lora_flow.cli as cli

    def no_flow(*args, **kwargs):
        raise AssertionError("the Prefect server must not start for a missing dataset")

    monkeypatch.setattr(cli, "run_flow", no_flow)
    start = time.monotonic()
    code = main(["train", "--dataset", str(tmp_path / "nonexistent"), "--storage", str(tmp_path / "s"),
                 "--work-dir", str(tmp_path / "w")])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 2 and time.monotonic() - start < 5
    assert err.count("nonexistent' not found") == 1 and err.startswith("error: dataset ")


def test_drive_links_and_urls_are_left_to_the_flow(tmp_path, monkeypatch):
    import anima_lora_flow.cli as cli

    calls = []
    monkeypatch.setattr(cli, "run_flow", lambda config, **flow_args: calls.append(config.dataset) or {"outcome": "x"})
    monkeypatch.setattr(cli, "_print_result", lambda *a, **k: None)
    for source in ("https://example.com/d.zip", "gs://bucket/d", "https://drive.google.com/drive/folders/abc"):
        assert main(["train", "--dataset", source, "--storage", str(tmp_path / "s"), "--work-dir", str(tmp_path / "w")]) == 0
    assert len(calls) == 3


def test_demo_restart_reaches_the_config_and_its_refusal_names_demo_flags(tmp_path, monkeypatch, capsys):
    import anima_lora_flow.cli as cli
    import anima_lora_flow.demo as demo
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.runner.resume import ResumeRefusedError

    seen = {}

    def fake_demo_config(work_dir, *, storage=None, epochs=None, restart=False):
        seen["restart"] = restart
        return TrainingConfig(dataset=str(tmp_path), project_name="demo", restart=restart)

    def refused(config, **flow_args):
        raise ResumeRefusedError(
            "project 'demo' already has a state at step 12 trained with different settings (max_train_epochs: 2 -> 3); "
            "run again with --restart to start over, or choose a new --project-name"
        )

    monkeypatch.setattr(demo, "demo_config", fake_demo_config)
    monkeypatch.setattr(cli, "run_flow", refused)
    assert main(["demo", "--work-dir", str(tmp_path), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "(max_train_epochs: 2 -> 3); run `anima-lora demo --restart` to start over" in err
    assert "or pass another --work-dir" in err and "--project-name" not in err and seen["restart"] is False

    monkeypatch.setattr(cli, "run_flow", lambda config, **flow_args: {"outcome": "completed", "restart": config.restart})
    monkeypatch.setattr(cli, "_print_result", lambda config, result, as_json: print(result))
    assert main(["demo", "--work-dir", str(tmp_path), "--restart"]) == 0
    assert seen["restart"] is True and "'restart': True" in capsys.readouterr().out


def test_help_shows_what_a_user_types(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[default: 0.9 0.99]" in out and "--sample-prompts FILE" in out and "PydanticUndefined" not in out
    assert main(["demo", "--help"]) == 0
    assert "--restart" in capsys.readouterr().out
    for argv in (["status", "--help"], ["doctor", "--help"], ["models", "download", "--help"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "CACHE_DIR" not in out and "STORAGE" not in out  # metavars say what to type, not the option's name
