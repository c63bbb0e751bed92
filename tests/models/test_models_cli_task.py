"""`anima-lora models ...` and the Prefect task around ensure_models."""

from __future__ import annotations

import argparse

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.core import known_models
from anima_lora_flow.models.commands import add_models_parser, run_models


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anima-lora")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["models", *argv])


class TestCommands:
    def test_list_before_download_shows_known_files(self, hub_online, tmp_path, capsys):
        assert run_models(parse("list", "--backend", "sd-scripts", "--cache-dir", str(tmp_path))) == 0
        out = capsys.readouterr().out
        assert "qwen_3_06b_base.safetensors" in out and "cd2a512003e2" in out and "missing" in out

    def test_download_then_verify(self, fake_hub, tmp_path, capsys):
        common = ("--backend", "sd-scripts", "--cache-dir", str(tmp_path))
        assert run_models(parse("download", *common)) == 0
        assert "text_encoder:" in capsys.readouterr().out
        assert run_models(parse("list", *common)) == 0
        assert "missing" not in capsys.readouterr().out
        assert run_models(parse("verify", *common)) == 0

    def test_verify_reports_damage_with_exit_1(self, fake_hub, tmp_path, capsys):
        common = ("--backend", "sd-scripts", "--cache-dir", str(tmp_path))
        run_models(parse("download", *common))
        vae = next((tmp_path / "hub").rglob("qwen_image_vae.safetensors")).resolve()
        vae.write_bytes(b"\0" * vae.stat().st_size)
        capsys.readouterr()
        assert run_models(parse("verify", *common)) == 1
        captured = capsys.readouterr()
        assert "damaged" in captured.out and captured.err.startswith("error: ") and "models download" in captured.err

    def test_user_error_exits_2_with_one_line(self, fake_hub, tmp_path, capsys):
        del fake_hub.repos[known_models.SINGLE_FILE_REPO]
        assert run_models(parse("download", "--backend", "sd-scripts", "--cache-dir", str(tmp_path))) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1

    def test_unknown_base_model_is_rejected_by_argparse(self):
        with pytest.raises(SystemExit) as info:
            parse("download", "--base-model", "sdxl")
        assert info.value.code == 2


def tiny_models_dir(root):
    for sub in known_models.DIFFUSERS_SUBFOLDERS:
        (root / sub).mkdir(parents=True)
    return root


class TestTask:
    def test_models_dir_is_used_as_is(self, tmp_path):
        from anima_lora_flow.tasks.models import download_models_task

        config = TrainingConfig(dataset="x", models_dir=str(tiny_models_dir(tmp_path / "tiny")))
        assert download_models_task.fn(config).diffusers_dir == tmp_path / "tiny"

    def test_incomplete_models_dir_is_a_user_error(self, tmp_path):
        from anima_lora_flow.errors import UserInputError
        from anima_lora_flow.tasks.models import download_models_task

        (tmp_path / "half" / "vae").mkdir(parents=True)
        config = TrainingConfig(dataset="x", models_dir=str(tmp_path / "half"))
        with pytest.raises(UserInputError, match="lacks transformer/"):
            download_models_task.fn(config)

    def test_second_run_is_cached_until_the_folder_is_gone(self, prefect_harness, tmp_path):
        import shutil

        from prefect import flow

        from anima_lora_flow.errors import UserInputError

        from anima_lora_flow.tasks.models import download_models_task

        config = TrainingConfig(dataset="x", models_dir=str(tiny_models_dir(tmp_path / "tiny")))

        @flow
        def stage():
            return download_models_task(config, return_state=True)

        assert stage().name == "Completed"
        assert stage().name == "Cached"
        shutil.rmtree(tmp_path / "tiny")
        tiny_models_dir(tmp_path / "tiny")
        (tmp_path / "tiny" / "vae").rmdir()
        with pytest.raises(UserInputError, match="lacks vae/"):  # not replayed from the cache, and not retried
            stage()
