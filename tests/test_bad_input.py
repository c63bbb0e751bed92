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


# --- folders that cannot be written (issue 17 item 12) -----------------------------------------------
@pytest.fixture
def no_flow(monkeypatch):
    """train must refuse before the Prefect server starts: reaching run_flow is a failure."""
    import anima_lora_flow.cli as cli

    def refuse(*args, **kwargs):
        raise AssertionError("the flow must not start")

    monkeypatch.setattr(cli, "run_flow", refuse)


@pytest.fixture
def dataset(tmp_path):
    from PIL import Image

    folder = tmp_path / "ds"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("a red square")
    return folder


@pytest.fixture
def a_file(tmp_path):
    """A path under a regular file can never be created, even by root."""
    path = tmp_path / "afile"
    path.write_text("x")
    return path


def _train(tmp_path, dataset, *extra):
    return ["train", "--dataset", str(dataset), "--storage", str(tmp_path / "runs"), "--models-dir", str(tmp_path / "m"), *extra]


def test_an_unwritable_work_dir_is_named(tmp_path, dataset, a_file, no_flow, capsys):
    code, err = _run(_train(tmp_path, dataset, "--work-dir", str(a_file / "w")), capsys)
    assert code == 2 and err == f"error: --work-dir {a_file / 'w'}: {a_file} is a file, not a folder; pass a folder\n"


def test_an_unwritable_anima_lora_cache_is_named(tmp_path, dataset, a_file, no_flow, monkeypatch, capsys):
    monkeypatch.setenv("ANIMA_LORA_CACHE", str(a_file / "cache"))
    code, err = _run(_train(tmp_path, dataset, "--work-dir", str(tmp_path / "w")), capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cache folder {a_file / 'cache'}: {a_file} is a file, not a folder")
    assert err.endswith(f"it comes from ANIMA_LORA_CACHE={a_file / 'cache'}: set ANIMA_LORA_CACHE to a writable folder\n")


def test_an_unwritable_home_is_named_for_the_default_folders(tmp_path, dataset, a_file, no_flow, monkeypatch, capsys):
    monkeypatch.delenv("ANIMA_LORA_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(a_file))
    code, err = _run(_train(tmp_path, dataset), capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{a_file} is a file, not a folder; it comes from HOME={a_file}: set ANIMA_LORA_CACHE to a writable folder" in err
    code, err = _run(["plan", str(dataset), "--gpu", "T4"], capsys)
    assert code == 2 and f"it comes from HOME={a_file}: set ANIMA_LORA_CACHE to a writable folder" in err
    code, err = _run(["validate", str(dataset)], capsys)
    assert code == 2 and f"it comes from HOME={a_file}" in err


def test_an_unwritable_prefect_home_is_named(tmp_path, a_file):
    from anima_lora_flow.errors import UserInputError
    from anima_lora_flow.platforms.prefect_env import configure_prefect_environment

    with pytest.raises(UserInputError, match="set PREFECT_HOME to a writable folder, or unset it"):
        configure_prefect_environment({"PREFECT_HOME": str(a_file / "prefect")})


def test_an_unwritable_hugging_face_cache_is_named(tmp_path, dataset, a_file):
    """huggingface_hub reads HF_HOME when imported: a child process starts with it set."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(a_file / "hf"), "ANIMA_LORA_CACHE": str(tmp_path / "cache")}
    argv = ["train", "--dataset", str(dataset), "--storage", str(tmp_path / "runs"), "--dry-run"]
    done = subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: Hugging Face download cache {a_file / 'hf' / 'hub'}: {a_file} is a file, not a folder; "
                           "set HF_HOME to a writable folder\n")
    assert not (tmp_path / "runs" / "my_lora").exists()


def test_a_read_only_work_dir_is_refused(tmp_path, dataset, no_flow, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into a mode-555 folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    code, err = _run(_train(tmp_path, dataset, "--work-dir", str(locked)), capsys)
    assert code == 2 and "is not writable" in err


# --- an unreachable Prefect API (issue 17 item 13) -----------------------------------------------------
def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_train_with_an_unreachable_prefect_api_stops_up_front(tmp_path, dataset, no_flow, monkeypatch, capsys, dry_run):
    url = f"http://127.0.0.1:{_closed_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    code, err = _run(_train(tmp_path, dataset, "--work-dir", str(tmp_path / "w"), *dry_run), capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: PREFECT_API_URL {url}: cannot reach host '127.0.0.1:{url.split(':')[2].split('/')[0]}' "
                          "(connection refused); start that server")


# --- the real model on a machine without a GPU (issue 17 item 6) ----------------------------------------
def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_train_without_a_gpu_is_refused_before_the_download_and_plan_for_another_gpu_works(tmp_path, dataset, capsys):
    if _has_cuda():
        pytest.skip("this machine has a GPU")
    no_gpu = "this machine has no CUDA GPU, and the Anima model (a 5.6 GB download) cannot train on a CPU"
    work = ["--work-dir", str(tmp_path / "w"), "--storage", str(tmp_path / "runs")]
    code, err = _run(["train", "--dataset", str(dataset), *work, "--dry-run"], capsys)
    assert code == 2 and no_gpu in err and "--models-dir with a small local model such as the demo's" in err
    code, err = _run(["plan", str(dataset), *work], capsys)
    assert code == 2 and no_gpu in err
    code, err = _run(["plan", str(dataset), *work, "--gpu", "T4"], capsys)
    assert code == 0 and no_gpu not in err


def test_cuda_graphs_without_a_gpu_are_refused_by_the_dry_run_and_planned_for_a_named_gpu(tmp_path, dataset, capsys):
    if _has_cuda():
        pytest.skip("this machine has a GPU")
    says = "--compile-mode cuda-graphs needs a CUDA GPU and this machine has none; use --compile-mode model"
    work = ["--work-dir", str(tmp_path / "w"), "--storage", str(tmp_path / "runs"), "--compile-mode", "cuda-graphs"]
    # --models-dir: a small local model may train on a CPU, but not with CUDA graphs (the trainer would refuse
    # it only after the caches were built)
    code, err = _run(["train", "--dataset", str(dataset), *work, "--models-dir", str(tmp_path), "--dry-run"], capsys)
    assert code == 2 and says in err
    code, err = _run(["plan", str(dataset), *work, "--gpu", "H100"], capsys)
    assert code == 0 and says not in err


# --- optional packages, refused before the download (issue 17 item 7, issue 16 item 4) ---------------------
def test_a_missing_attention_package_is_refused_by_plan_and_train(tmp_path, dataset, no_flow, capsys):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    says = "error: --attention-backend flash needs the flash_attn package: pip install flash-attn"
    for argv in (["plan", str(dataset), "--gpu", "T4"], _train(tmp_path, dataset, "--dry-run"), _train(tmp_path, dataset)):
        code, err = _run([*argv, "--attention-backend", "flash", "--work-dir", str(tmp_path / "w")], capsys)
        assert code == 2 and err.startswith(says), argv


def test_the_flows_parameters_keep_their_types_too():
    """A deployment's parameters arrive as JSON: Prefect validates them with the same strict model."""
    from prefect.exceptions import ParameterTypeError

    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.flows.train_lora import train_lora

    params = TrainingConfig(dataset="d", betas=(0.9, 0.999)).model_dump(mode="json")
    assert train_lora.validate_parameters({"config": params})["config"].betas == (0.9, 0.999)
    for bad in ({"network_dim": "8"}, {"restart": "yes"}, {"learning_rate": True}):
        with pytest.raises(ParameterTypeError):
            train_lora.validate_parameters({"config": {**params, **bad}})
