"""A real sd-scripts run on the CPU samples every epoch and reports its validation loss as our events.

Needs ANIMA_SD_SCRIPTS_DIR naming a checkout installed by ensure_sd_scripts (its venv beside it) and
ANIMA_MODELS_DIR holding the single files (anima-*.safetensors, qwen_3_06b_base.safetensors,
qwen_image_vae.safetensors; bench/full_anima.py writes random ones at the real sizes). sd-scripts loads
the real model sizes whatever the weights, so on 2 CPU cores this takes about 15 minutes: it is `slow`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.runner.prepare import dataset_report
from anima_lora_flow.trainer.backend import EXIT_DONE, TrainJob
from anima_lora_flow.trainer.events import read_events
from anima_lora_flow.trainer.sdscripts.__main__ import run_job
from anima_lora_flow.trainer.sdscripts.backend import SdScriptsBackend
from anima_lora_flow.trainer.sdscripts.install import accelerate_executable

SD = os.environ.get("ANIMA_SD_SCRIPTS_DIR")
MODELS = os.environ.get("ANIMA_MODELS_DIR")
pytestmark = [pytest.mark.slow, pytest.mark.sdscripts]
if not (SD and MODELS and accelerate_executable(SD).is_file()):
    pytest.skip("needs ANIMA_SD_SCRIPTS_DIR (a checkout with its venv) and ANIMA_MODELS_DIR", allow_module_level=True)


def test_a_real_run_samples_each_epoch_and_reports_its_validation_loss(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        Image.new("RGB", (256, 256), colour).save(images / f"{name}.png")
        (images / f"{name}.txt").write_text(f"a plain {name} square")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a plain red square --w 64 --h 64 --s 2 --l 1\n")  # one cheap image: the DiT is full size
    config = TrainingConfig(project_name="kohya", dataset=str(images), trainer="sd-scripts", resolution=256,
                            min_bucket_reso=64, max_train_epochs=2, repeats=1, mixed_precision="no", network_dim=4, network_alpha=4,
                            validation_split=0.5, sample_every_n_epochs=1, sample_prompts=str(prompts),
                            storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))  # fmt: skip
    report = dataset_report(config)
    models = Path(MODELS)
    job = TrainJob(
        config=config.model_dump(mode="json"), items=[i.to_json() for i in report.train_items()], models_dir=None,
        work_dir=str(tmp_path / "work"), output_dir=str(tmp_path / "out"), run_id="r1", run_dir=str(tmp_path / "run"),
        dit=str(next(models.glob("anima-*.safetensors"))), text_encoder=str(models / "qwen_3_06b_base.safetensors"),
        vae=str(models / "qwen_image_vae.safetensors"), precision="no", total_steps=2, tool_dir=SD,
        validation_items=[i.to_json() for i in report.validation_items()],
    )  # fmt: skip
    job = SdScriptsBackend().prepare(job, report)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert run_job(job, tmp_path / "events.jsonl") == EXIT_DONE
    finally:
        signal.signal(signal.SIGTERM, handler)  # run_job takes SIGTERM as a stop request in its own process

    events = list(read_events(tmp_path / "events.jsonl"))
    samples = [e for e in events if e.event == "samples"]
    assert [(e.step, e.epoch, e.error) for e in samples] == [(1, 1, None), (2, 2, None)]
    assert [len(e.base) for e in samples] == [1, 0]  # the step-0 image, listed once for the store
    for event in samples:
        assert Path(event.path).is_file() and event.prompts == ["a plain red square"]
        with Image.open(event.path) as grid:
            assert grid.width > 256 and grid.height > 2 * 256  # the base row over the LoRA row
    validations = [e for e in events if e.event == "validation"]
    assert [(e.step, e.epoch, e.images, e.held_out) for e in validations] == [(1, 1, 1, True), (2, 2, 1, True)]
    assert all(e.loss > 0 for e in validations) and validations[-1].best_epoch in (1, 2)
