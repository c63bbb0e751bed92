"""sd-scripts' own samples and validation loss: what it is told (TOML, prompt file), how its images
become the native backend's grid and Samples event, and which images it validates on."""

from __future__ import annotations

import ast
import os
import re
import signal
import sys
import tomllib
import types
from pathlib import Path

import pytest
from PIL import Image

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.core.sample_prompts import SamplePrompt, to_sd_scripts_line
from anima_lora_flow.core.train_items import TrainItem
from anima_lora_flow.runner.prepare import dataset_report
from anima_lora_flow.trainer.backend import TrainJob
from anima_lora_flow.trainer.sample_plan import sample_prompts_for
from anima_lora_flow.trainer.sdscripts.backend import SdScriptsBackend
from anima_lora_flow.trainer.sdscripts.prepare import prepare_sd_scripts_run
from anima_lora_flow.trainer.sdscripts.samples import SampleCollector, prompt_file_text, run_prompts, sample_files
from anima_lora_flow.trainer.sdscripts.staging import stage_dataset, stage_validation, validation_images

PROMPTS = [
    SamplePrompt("1girl, smile", negative_prompt="lowres", width=512, height=768, steps=20, seed=42, guidance=4.0),
    SamplePrompt("#1 fan art -- and more --like this", width=512, height=512, steps=20, seed=43, guidance=4.0),
]


def _prepare(tmp_path: Path, config: TrainingConfig, **kwargs):
    return prepare_sd_scripts_run(
        config, run_id="r1", image_dir=str(tmp_path / "images"), dit="/m/dit.safetensors", qwen3="/m/te.safetensors",
        vae="/m/vae.safetensors", sd_scripts_dir=tmp_path / "sd" / "sd-scripts", config_dir=tmp_path / "configs",
        output_dir=tmp_path / "out", mixed_precision="bf16", total_steps=8, **kwargs,
    )  # fmt: skip


def _config(tmp_path: Path, **overrides) -> TrainingConfig:
    settings = dict(project_name="my_lora", dataset=str(tmp_path / "images"), trainer="sd-scripts", resolution=512,
                    storage=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))  # fmt: skip
    return TrainingConfig(**{**settings, **overrides})


def test_the_training_toml_carries_the_prompt_file_and_the_cadence(tmp_path):
    prepared = _prepare(tmp_path, _config(tmp_path, sample_every_n_epochs=2), prompts=PROMPTS)
    training = tomllib.loads(prepared.training_path.read_text())
    assert training["sample_prompts"] == str(prepared.prompt_path) == str(tmp_path / "configs" / "sample_prompts.txt")
    assert training["sample_every_n_epochs"] == 2
    assert training["sample_at_first"] is True  # a fresh run's step-0 samples are the base row
    lines = prepared.prompt_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == to_sd_scripts_line(PROMPTS[0]) == "1girl, smile --w 512 --h 768 --s 20 --d 42 --l 4 --n lowres"
    # sd-scripts skips lines starting with "#" and splits at " --": neither may change the prompt list.
    assert lines[1] == " #1 fan art - and more -like this --w 512 --h 512 --s 20 --d 43 --l 4"
    assert "--sample_prompts" not in prepared.command_text  # every setting travels in the TOML


def test_a_resumed_run_samples_no_base_row_and_a_run_without_cadence_samples_nothing(tmp_path):
    resumed = _prepare(tmp_path, _config(tmp_path, sample_every_n_epochs=1), prompts=PROMPTS, resume_dir="/s/state")
    training = tomllib.loads(resumed.training_path.read_text())
    assert training["sample_every_n_epochs"] == 1 and "sample_at_first" not in training  # its LoRA is not zero any more
    off = _prepare(tmp_path, _config(tmp_path), prompts=PROMPTS)
    assert off.prompt_path is None and not {"sample_prompts", "sample_at_first"} & set(tomllib.loads(off.training_path.read_text()))


def test_without_a_prompt_file_the_native_default_prompts_are_used(tmp_path):
    items = [TrainItem(tmp_path / f"{i}.png", caption, (512, 512)) for i, caption in enumerate(["a cat", "a dog", ""])]
    config = _config(tmp_path, sample_every_n_epochs=1)
    prompts = run_prompts(config, items)
    assert prompts == sample_prompts_for(config, items) and {p.prompt for p in prompts} == {"a cat", "a dog"}
    assert run_prompts(_config(tmp_path), items) == []  # no cadence: nothing sampled


def test_the_validation_images_get_a_dataset_sd_scripts_never_trains_on(tmp_path):
    config = _config(tmp_path, seed=7)
    prepared = _prepare(tmp_path, config, validation_subsets=[("/w/validation/0/ds", 1)])
    datasets = tomllib.loads(prepared.dataset_path.read_text())["datasets"]
    assert len(datasets) == 2 and "validation_split" not in datasets[0]
    assert datasets[1]["validation_split"] == 1.0 and datasets[1]["validation_seed"] == 7
    assert datasets[1]["subsets"] == [{"num_repeats": 1, "image_dir": "/w/validation/0/ds", "caption_extension": ".txt",
                                       "caption_dropout_rate": 0.0}]  # fmt: skip


def _sd_function(name: str):
    """A function compiled from the sd-scripts checkout's own train_util.py (it imports too much to import)."""
    path = Path(os.environ["ANIMA_SD_SCRIPTS_DIR"]) / "library" / "train_util.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"re": re, "logger": __import__("logging").getLogger("sd"), "List": list, "Dict": dict,
                 "toml": None, "json": None}  # fmt: skip
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace[name]


@pytest.mark.skipif(not os.environ.get("ANIMA_SD_SCRIPTS_DIR"), reason="needs ANIMA_SD_SCRIPTS_DIR (a kohya sd-scripts checkout)")
def test_sd_scripts_reads_the_prompt_file_back_as_written(tmp_path, monkeypatch):
    # load_prompts imports line_to_prompt_dict from its own module: both are the checkout's code.
    module = types.ModuleType("library.train_util")
    module.line_to_prompt_dict = _sd_function("line_to_prompt_dict")
    monkeypatch.setitem(sys.modules, "library", types.ModuleType("library"))
    monkeypatch.setitem(sys.modules, "library.train_util", module)
    load_prompts = _sd_function("load_prompts")
    path = tmp_path / "prompts.txt"
    path.write_text(prompt_file_text(PROMPTS), encoding="utf-8")
    read = load_prompts(str(path))
    assert [(d["prompt"], d["width"], d["height"], d["sample_steps"], d["seed"], d["scale"], d["enum"]) for d in read] == [
        ("1girl, smile", 512, 768, 20, 42, 4.0, 0), ("#1 fan art - and more -like this", 512, 512, 20, 43, 4.0, 1),
    ]
    assert read[0]["negative_prompt"] == "lowres" and "negative_prompt" not in read[1]


def _sample(folder: Path, epoch: int, index: int, stamp: str, colour, seed: int | None = 42) -> Path:
    """An image named as sd-scripts 48d368fa names it (anima_train_utils._sample_image_inference)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"my_lora_e{epoch:06d}_{index:02d}_{stamp}{'' if seed is None else f'_{seed}'}.png"
    Image.new("RGB", (64, 96), colour).save(path)
    return path


def test_sd_scripts_images_become_the_grid_and_the_samples_event(tmp_path):
    sample = tmp_path / "out" / "sample"
    base = [_sample(sample, 0, i, "20261201120000", "gray") for i in range(2)]
    _sample(sample, 1, 0, "20261201120500", "blue")
    newest = _sample(sample, 1, 0, "20261201120600", "red")  # epoch 1 sampled again (a repeated epoch): the newest wins
    _sample(sample, 1, 1, "20261201120600", "green", seed=None)
    collector = SampleCollector(PROMPTS, tmp_path / "out", "my_lora")
    [note] = collector(0, 0)
    assert note.event == "log" and "base model" in note.message and collector.base == base
    [event] = collector(4, 1)
    assert (event.event, event.step, event.epoch, event.error) == ("samples", 4, 1, None)
    assert event.path == str(tmp_path / "out" / "samples" / "my_lora-step00000004.png")
    assert event.prompts == [p.prompt for p in PROMPTS] and event.base == [str(p) for p in base]
    assert sample_files(sample, "my_lora", 1)[0] == newest
    [again] = collector(4, 1)
    assert again.path == event.path and again.base == []  # the base row is stored once
    with Image.open(event.path) as grid:
        pixels = grid.convert("RGB")
        colours = {pixels.getpixel((x, y)) for x in range(0, grid.width, 4) for y in range(0, grid.height, 4)}
    assert {(128, 128, 128), (255, 0, 0), (0, 128, 0)} <= colours and (0, 0, 255) not in colours  # both rows, newest image


def test_a_missing_image_or_a_resumed_run_is_said_in_the_event_and_the_title(tmp_path):
    sample = tmp_path / "out" / "sample"
    _sample(sample, 2, 0, "20261201120000", "red")
    collector = SampleCollector(PROMPTS, tmp_path / "out", "my_lora")
    [failed] = collector(8, 2)
    assert failed.path is None and "no sample image for prompt 2 at epoch 2" in failed.error
    _sample(sample, 2, 1, "20261201120000", "green")
    [event] = collector(8, 2)  # a resumed session has no step-0 samples: the LoRA row alone
    assert event.error is None and event.base == []
    with Image.open(event.path) as grid:
        assert grid.height < 2 * 256 + 100  # one row of 256 px cells, the title and the prompts


def test_validation_images_are_the_native_choice_staged_apart(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.new("RGB", (512, 512), (40 * i, 10, 10)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"picture {i}")
    split = _config(tmp_path, validation_split=0.34)
    report = dataset_report(split)
    assert len(report.held_out) == 2 and len(report.images) == 4
    chosen, held_out = validation_images(report, split.seed)
    assert held_out and sorted(r.sha256 for r in chosen) == sorted(r.sha256 for r in report.held_out)
    staged = stage_validation(report, split.resolved_work_dir(), split.seed)
    trained = stage_dataset(report, split.resolved_work_dir())
    assert staged.root != trained.root  # a stage of its own: restaging one never removes the other
    held_names = {p.name for folder, _ in staged.subsets for p in Path(folder).glob("*.png")}
    train_names = {p.name for folder, _ in trained.subsets for p in Path(folder).glob("*.png")}
    assert len(held_names) == 2 and not held_names & train_names and len(train_names) == 4
    assert stage_dataset(report, split.resolved_work_dir()).reused and stage_validation(report, split.resolved_work_dir(), split.seed).reused

    whole = _config(tmp_path)  # no split: a fixed few training images, also trained on
    report = dataset_report(whole)
    chosen, held_out = validation_images(report, whole.seed)
    assert not held_out and len(chosen) == 4  # trainer/validation.py's minimum
    job = TrainJob(config=whole.model_dump(mode="json"), items=[], models_dir=None, work_dir=str(whole.resolved_work_dir()),
                   output_dir=str(tmp_path / "out"), dit="/m/dit", text_encoder="/m/te", vae="/m/vae")  # fmt: skip
    job = SdScriptsBackend().prepare(job, report)
    assert [len(list(Path(f).glob("*.png"))) for f, _ in job.validation_subsets] == [4]
    assert TrainJob.from_json(job.to_json()).validation_subsets == job.validation_subsets


STAND_IN = """
import sys, tomllib
from pathlib import Path
args = sys.argv[1:]
cfg = tomllib.loads(Path(args[args.index("--config_file") + 1]).read_text())
Path(cfg["output_dir"]).mkdir(parents=True, exist_ok=True)
Path(cfg["output_dir"], cfg["output_name"] + ".safetensors").write_bytes(b"x")
print("sample_prompts" in cfg and "sampling" or "no sampling")
"""


def test_a_dataset_without_captions_samples_nothing_and_says_so(tmp_path):
    """sd-scripts reads no empty prompt line; the native default for a caption-less dataset is the empty prompt."""
    from anima_lora_flow.trainer.events import read_events
    from anima_lora_flow.trainer.sdscripts.__main__ import run_job

    sd = tmp_path / "cache" / "sd-scripts"
    sd.mkdir(parents=True)
    (sd / "anima_train_network.py").write_text(STAND_IN)
    accelerate = tmp_path / "cache" / "venv" / "bin" / "accelerate"
    accelerate.parent.mkdir(parents=True)
    # `accelerate launch --num_cpu_threads_per_process 1 SCRIPT ARGS...` -> python SCRIPT ARGS...
    accelerate.write_text(f"#!{sys.executable}\nimport os, sys\nos.execv(sys.executable, [sys.executable, *sys.argv[4:]])\n")
    accelerate.chmod(0o755)
    config = _config(tmp_path, sample_every_n_epochs=1, max_train_epochs=1)
    items = [TrainItem(tmp_path / "images" / "a.png", "", (512, 512)).to_json()]
    job = TrainJob(config=config.model_dump(mode="json"), items=items, models_dir=None, work_dir=str(tmp_path / "work"),
                   output_dir=str(tmp_path / "out"), run_id="r1", run_dir=str(tmp_path / "run"), dit="/m/d",
                   text_encoder="/m/t", vae="/m/v", total_steps=1, tool_dir=str(sd), dataset_dir=str(tmp_path / "images"))  # fmt: skip
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert run_job(job, tmp_path / "events.jsonl") == 0
    finally:
        signal.signal(signal.SIGTERM, handler)  # run_job takes SIGTERM as a stop request in its own process
    logs = [e.message for e in read_events(tmp_path / "events.jsonl") if e.event == "log"]
    assert any(m.startswith("no sample images: the dataset has no caption") for m in logs)
    assert not (tmp_path / "run" / "configs" / "sample_prompts.txt").exists()
