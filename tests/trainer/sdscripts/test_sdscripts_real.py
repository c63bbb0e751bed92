"""Real sd-scripts runs: need a checkout made by ensure_sd_scripts, the Anima weights and a CUDA GPU.

Set ANIMA_SD_SCRIPTS_DIR (the checkout) and ANIMA_MODELS_DIR (holding anima-*.safetensors,
qwen_3_06b_base.safetensors, qwen_image_vae.safetensors); otherwise these are skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.trainer.sdscripts.command import build_command
from anima_lora_flow.trainer.sdscripts.install import accelerate_executable
from anima_lora_flow.trainer.sdscripts.launch import run_sd_scripts
from anima_lora_flow.trainer.sdscripts.render import render_configs
from anima_lora_flow.trainer.sdscripts.resume import fix_train_state, resume_parser

pytestmark = pytest.mark.sdscripts


def _gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


SD = os.environ.get("ANIMA_SD_SCRIPTS_DIR")
MODELS = os.environ.get("ANIMA_MODELS_DIR")
if not (SD and MODELS and Path(SD, "anima_train_network.py").is_file() and _gpu()):
    pytest.skip("needs ANIMA_SD_SCRIPTS_DIR, ANIMA_MODELS_DIR and a CUDA GPU", allow_module_level=True)


def _dataset(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (512, 512), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a plain {colour} square")
    return folder


def _run(tmp_path: Path, config: TrainingConfig, run_id: str, **kwargs):
    models = Path(MODELS)
    rendered = render_configs(
        config, run_id=run_id, image_dir=str(tmp_path / "images"),
        dit=str(next(models.glob("anima-*.safetensors"))), qwen3=str(models / "qwen_3_06b_base.safetensors"),
        vae=str(models / "qwen_image_vae.safetensors"), output_dir=str(tmp_path / "out"),
        mixed_precision="bf16", run_date="2026-01-01", total_steps=8, **kwargs,
    )  # fmt: skip
    training, dataset = rendered.write(tmp_path / "configs")
    return build_command(SD, training, dataset, python=str(accelerate_executable(SD)))


def test_resume_keeps_absolute_steps(tmp_path):
    _dataset(tmp_path / "images")
    config = TrainingConfig(dataset=str(tmp_path / "images"), network_dim=4, network_alpha=4, resolution=512,
                            repeats=2, max_train_epochs=2, project_name="t")  # fmt: skip
    states = []

    def sink(event):
        if event.event == "checkpoint" and event.kind == "state":
            states.append(event)

    first = run_sd_scripts(_run(tmp_path, config, "a", save_every_n_steps=2), sink=sink, stop_requested=lambda: bool(states))
    assert first.stopped and states[0].step == 2
    state_dir = Path(states[0].path)
    fix_train_state(state_dir, step=states[0].step)
    events = []
    cmd = _run(tmp_path, config, "b", resume_dir=str(state_dir))
    result = run_sd_scripts(cmd, sink=events.append, parser=resume_parser(config, state_dir))
    assert [e.step for e in events if e.event == "step"] == [3, 4, 5, 6, 7, 8]
    assert result.final_lora and Path(result.final_lora).is_file()
    shutil.rmtree(tmp_path / "out")
