"""The `validate` command and the Prefect task wrapper."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.dataset.commands import add_validate_parser
from anima_lora_flow.core.dataset_report import DatasetError
from anima_lora_flow.tasks import dataset as dataset_tasks

from dataset_builders import write_caption, write_image


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="anima-lora")
    add_validate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    write_image(tmp_path / "set" / "a.png", size=(640, 480)), write_caption(tmp_path / "set" / "a.txt", "1girl, solo")
    write_image(tmp_path / "set" / "b.gif", fmt="GIF")
    return tmp_path / "set"


def test_validate_prints_a_readable_report(good_folder: Path, tmp_path: Path, capsys):
    assert run_cli("validate", str(good_folder), "--work-dir", str(tmp_path / "w"), "--repeats", "3") == 0
    out = capsys.readouterr().out
    assert "1 images will be trained (x3 repeats = 3 samples per epoch); 1 skipped" in out
    assert "[skipped] b.gif: .gif images are not loaded by the trainer" in out
    assert "Buckets at 768px" in out and "Top tags: 1girl (1), solo (1)" in out


def test_validate_json(good_folder: Path, tmp_path: Path, capsys):
    assert run_cli("validate", str(good_folder), "--json", "--work-dir", str(tmp_path / "w"), "--resolution", "512") == 0
    data = json.loads(capsys.readouterr().out)
    assert [i["path"] for i in data["images"]] == ["a.png"]
    assert data["problems"][0]["file"] == "b.gif" and data["resolution"] == 512
    assert len(data["fingerprint"]) == 64


def test_validate_error_exit_code_and_one_line(tmp_path: Path, capsys):
    assert run_cli("validate", str(tmp_path / "missing"), "--work-dir", str(tmp_path / "w")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset ") and "not found" in err and err.count("\n") == 1


def test_the_task_adds_no_retry_layer_over_the_downloads():
    """A URL's client retries 5 times; task retries around it made that up to 15 (one retry layer per operation)."""
    assert dataset_tasks.prepare_dataset_task.retries == 0
    assert dataset_tasks.artifact_key("My_LoRA.v2") == "dataset-report-my-lora-v2"


def test_task_body_publishes_the_report(good_folder: Path, tmp_path: Path, monkeypatch):
    published = []
    monkeypatch.setattr(dataset_tasks, "create_markdown_artifact", lambda **kw: published.append(kw))
    config = TrainingConfig(dataset=str(good_folder), work_dir=str(tmp_path / "w"), project_name="Demo_1", repeats=2)
    report = dataset_tasks.prepare_dataset_task.fn(config)
    assert report.trainable_count == 1 and report.samples_per_epoch == 2
    assert published[0]["key"] == "dataset-report-demo-1" and "# Dataset report" in published[0]["markdown"]


def test_task_publishes_the_report_before_failing(tmp_path: Path, monkeypatch):
    published = []
    monkeypatch.setattr(dataset_tasks, "create_markdown_artifact", lambda **kw: published.append(kw))
    write_image(tmp_path / "set" / "only.gif", fmt="GIF")
    config = TrainingConfig(dataset=str(tmp_path / "set"), work_dir=str(tmp_path / "w"))
    with pytest.raises(DatasetError, match="no trainable image"):
        dataset_tasks.prepare_dataset_task.fn(config)
    assert "only.gif" in published[0]["markdown"]


def test_task_in_a_flow_creates_the_artifact(prefect_harness, good_folder: Path, tmp_path: Path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow
    def intake(config: TrainingConfig):
        return dataset_tasks.prepare_dataset_task(config)

    config = TrainingConfig(dataset=str(good_folder), work_dir=str(tmp_path / "w"), project_name="artifact-test")
    assert intake(config).trainable_count == 1

    async def latest():
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dataset-report-artifact-test"])))

    import asyncio

    artifacts = asyncio.run(latest())
    assert artifacts and "1 images will be trained" in artifacts[0].data


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [("--resolution", "0", "256 to 2048"), ("--resolution", "-5", "256 to 2048"), ("--resolution", "100", "256 to 2048"),
     ("--resolution", "4096", "256 to 2048"), ("--repeats", "-2", "1 to 1000"), ("--repeats", "0", "1 to 1000"),
     ("--repeats", "1001", "1 to 1000")],
)
def test_validate_flags_have_the_same_bounds_as_train(good_folder: Path, tmp_path: Path, capsys, flag: str, value: str, allowed: str):
    """--resolution 0 crashed with ZeroDivisionError; negatives printed nonsense buckets and sample counts."""
    from anima_lora_flow.cli import main

    assert main(["validate", str(good_folder), "--work-dir", str(tmp_path / "w"), flag, value]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {flag} {value} is out of range; use a value from {allowed} (as train does)\n"
    assert "Traceback" not in captured.err and captured.out == ""


def test_validate_accepts_the_bounds_themselves(good_folder: Path, tmp_path: Path):
    from anima_lora_flow.cli import main

    for argv in (["--resolution", "256", "--repeats", "1"], ["--resolution", "2048", "--repeats", "1000"]):
        assert main(["validate", str(good_folder), "--work-dir", str(tmp_path / "w"), *argv]) == 0
