"""What a user sees for each kind of wrong input: one `error:` line naming what to change, and exit 2."""

from __future__ import annotations

import pytest

from anima_lora_flow.cli import build_parser, config_from_args, main


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--learning-rate", "nan"], "error: --learning-rate: must be a finite number, got nan"),
        (["--network-alpha", "inf"], "error: --network-alpha: must be a finite number, got inf"),
        (["--sigmoid-scale", "inf"], "error: --sigmoid-scale: must be a finite number, got inf"),
        (["--discrete-flow-shift=-inf"], "error: --discrete-flow-shift: must be a finite number, got -inf"),
        (["--project-name", "CON"], "error: --project-name: 'CON' is a reserved file name on Windows"),
    ],
)
def test_bad_flag_values(in_tmp, capsys, flags, says):
    code, err = _run(["plan", "ds", *flags], capsys)
    assert code == 2 and err.startswith(says) and err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("network_dim = true\n", "error: cfg.toml: network_dim: Input should be a valid integer, got true"),
        ('learning_rate = "1e-4"\n', 'error: cfg.toml: learning_rate: Input should be a valid number, got "1e-4" '
                                     "(write the number without quotes)"),
        ('restart = "yes"\n', 'error: cfg.toml: restart: Input should be a valid boolean, got "yes" (write true or false'),
        ("betas = [0.9]\n", "error: cfg.toml: betas: needs two numbers, such as [0.9, 0.99], got [0.9]"),
        ("learning_rate = nan\n", "error: cfg.toml: learning_rate: must be a finite number, got nan"),
        ("network_dim = 8\nnetwork_dim = 16\n", "error: cfg.toml: network_dim is set twice; keep one of them"),
        ('project_name = "trailing."\n', "error: cfg.toml: project_name: 'trailing.' ends in '.'; a project name is"),
    ],
)
def test_bad_config_file_values(in_tmp, capsys, text, says):
    (in_tmp / "cfg.toml").write_text(text)
    code, err = _run(["plan", "ds", "--config", "cfg.toml"], capsys)
    assert code == 2 and err.startswith(says) and err.count("\n") == 1


def test_flags_still_parse_into_typed_settings_and_choices_ignore_case():
    args = build_parser().parse_args(
        ["train", "--dataset", "d", "--optimizer", "AdamW8bit", "--mixed-precision", "BF16", "--betas", "0.9", "0.999",
         "--restart", "--learning-rate", "2e-4", "--network-dim", "8", "--lr-scheduler", "Cosine"]
    )
    cfg = config_from_args(args)
    assert (cfg.optimizer, cfg.mixed_precision, cfg.betas, cfg.restart, cfg.learning_rate, cfg.network_dim, cfg.lr_scheduler) == (
        "adamw8bit", "bf16", (0.9, 0.999), True, 2e-4, 8, "cosine")


def test_the_sd_scripts_spelling_of_an_optimizer_is_accepted_from_a_file(in_tmp):
    (in_tmp / "cfg.toml").write_text('dataset = "d"\noptimizer = "AdamW8bit"\nlr_scheduler = "Cosine_With_Restarts"\n')
    cfg = config_from_args(build_parser().parse_args(["train", "--config", "cfg.toml"]))
    assert cfg.optimizer == "adamw8bit" and cfg.lr_scheduler == "cosine_with_restarts"


def test_an_unknown_choice_flag_lists_the_choices(capsys):
    code, err = _run(["plan", "ds", "--optimizer", "lion"], capsys)
    assert code == 2 and "argument --optimizer: invalid choice: 'lion' (choose from" in err
