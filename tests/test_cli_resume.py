"""What `train --dry-run` and `plan` say about the state in storage: would resume, would refuse, steps
done. A real dataset and a real run store holding a published state; no Prefect server, no download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.cli import build_parser, config_from_args, main
from anima_lora_flow.runner.prepare import dataset_report, open_run_store
from anima_lora_flow.runner.resume import state_extra


def make_dataset(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"1girl, solo, picture {i}")
    return folder


def base_args(tmp_path: Path) -> list[str]:
    # --models-dir names a folder that does not exist: anything reaching the models stage would fail on it.
    return ["--dataset", str(tmp_path / "ds"), "--storage", str(tmp_path / "runs"), "--work-dir", str(tmp_path / "work"),
            "--resolution", "256", "--project-name", "p", "--models-dir", str(tmp_path / "no-model-here")]


def publish_state(tmp_path: Path, step: int = 12, epochs: int = 10) -> None:
    """A native state at `step` trained with base_args' settings on the dataset as it is now."""
    config = config_from_args(build_parser().parse_args(["train", *base_args(tmp_path)]))
    report = dataset_report(config)
    per_epoch = 4 * config.repeats
    folder = tmp_path / f"state{step}"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"w" * 64)
    (folder / "progress.json").write_text(json.dumps(
        {"global_step": step, "epoch": step // per_epoch, "step_in_epoch": step % per_epoch,
         "total_steps": per_epoch * epochs, "steps_per_epoch": per_epoch}))
    open_run_store(config).publish_state(
        folder, step, epoch=step // per_epoch, fingerprint=config.fingerprint(report.fingerprint),
        extra={**state_extra(config.training_fields(), report.fingerprint), "total_steps": per_epoch * epochs,
               "step_in_epoch": step % per_epoch, "epochs": epochs},
    )


@pytest.fixture
def project(tmp_path):
    make_dataset(tmp_path / "ds")
    publish_state(tmp_path)
    return tmp_path


def test_dry_run_says_it_would_resume_and_what_changes(project, capsys):
    assert main(["train", *base_args(project), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would resume from step 12 of 200" in out and "Steps     200 (" in out and "12 done" in out

    assert main(["train", *base_args(project), "--max-train-epochs", "12", "--learning-rate", "2e-4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: --learning-rate 0.0001 -> 0.0002: the learning-rate schedule is re-planned from step 12" in out
    assert "warning: --max-train-epochs 10 -> 12: the learning-rate schedule is re-planned from step 12" in out
    assert "would resume from step 12 of 240" in out


def test_dry_run_says_it_would_refuse_with_exit_2(project, capsys):
    assert main(["train", *base_args(project), "--network-dim", "8", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("would refuse: project 'p' already has a state at step 12")
    assert "(--network-dim 20 -> 8)" in captured.err and "--restart" in captured.err
    assert "would resume" not in captured.out

    (project / "ds" / "0.txt").write_text("1boy, another caption")  # the dataset changed since the state
    assert main(["train", *base_args(project), "--dry-run", "--json"]) == 2
    assert "would refuse: " in (err := capsys.readouterr().err) and "the dataset's images or captions" in err

    assert main(["train", *base_args(project), "--dry-run", "--restart", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["resume"]["would"].startswith("would start over at step 0 of 200 (--restart moves the earlier states")
    assert [s.step for s in open_run_store(config_from_args(build_parser().parse_args(
        ["train", *base_args(project)]))).list_states()] == [12]  # a dry run moves nothing


def test_plan_counts_the_steps_already_done(project, capsys):
    args = base_args(project)
    assert main(["plan", args[1], *args[2:], "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps_done"] == 12 and plan["steps"]["total_steps"] == 200
    assert plan["warnings"][0] == "resuming from the state saved at step 12 of 200, in epoch 1 of 10"

    assert main(["plan", args[1], *args[2:], "--network-dim", "8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps_done"] == 0 and "train would refuse the saved state" in plan["warnings"][0]


def test_the_fast_commands_import_neither_prefect_nor_torch(project):
    """validate, plan and train --dry-run answer in about a second: no Prefect server, and no torch or
    transformers import, also when --models-dir holds tokenizers to count caption tokens with (torch is
    asked only where a GPU device exists)."""
    from anima_lora_flow.trainer.tiny import build_tiny_model

    models = str(build_tiny_model(project / "tiny"))
    code = (
        "import json, sys\n"
        "from anima_lora_flow.cli import main\n"
        "codes = [main(a) for a in json.loads(sys.argv[1])]\n"
        "heavy = ('prefect', 'torch', 'transformers', 'diffusers')\n"
        "print(json.dumps({'codes': codes, 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    args = [*base_args(project), "--models-dir", models]  # the later --models-dir wins
    commands = [["validate", args[1], "--work-dir", args[5], "--models-dir", models], ["plan", args[1], *args[2:]],
                ["train", *args, "--dry-run"]]
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 0], proc.stderr
    gpu_device = any(os.path.exists(n) for n in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))
    expected = [] if not gpu_device and sys.platform.startswith("linux") else [m for m in result["loaded"] if m == "torch"]
    assert result["loaded"] == expected
