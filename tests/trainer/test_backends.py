"""The backend interface: one registry, one protocol, typed events, and no branching on a backend's name elsewhere."""

from __future__ import annotations

import ast
import json
import sys
import typing
from pathlib import Path

import pytest
from package_sources import package_modules

from anima_lora_flow.config import TrainerBackend, TrainingConfig
from anima_lora_flow.core import backends
from anima_lora_flow.errors import NotBuiltError
from anima_lora_flow.trainer.backend import Backend, TrainJob
from anima_lora_flow.trainer.events import Checkpoint, Done, Event, JsonLinesParser, Plan, Step
from anima_lora_flow.trainer.registry import BACKENDS, backend_for

PACKAGE = Path(__file__).parents[2]
REGISTRY = PACKAGE / "core" / "backends.py"  # the table of names


def test_the_registry_holds_every_trainer_choice_and_each_is_a_backend():
    # One table names them: the setting's choices, the registry and models' --backend all read it.
    assert typing.get_args(TrainerBackend) == backends.NAMES == tuple(BACKENDS)
    assert {backends.model_layout(name) for name in backends.NAMES} <= set(typing.get_args(backends.ModelLayout))
    for name, backend in BACKENDS.items():
        assert isinstance(backend, Backend), name
        assert backend.name == backend.numbers.name == name
    with pytest.raises(KeyError, match="no training backend named 'kohya-ss'"):
        backend_for("kohya-ss")


_BACKEND_REFS = {"trainer", "backend", "backend_name"}  # config.trainer, Effective.backend, a `backend` argument


def _is_backend_ref(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in _BACKEND_REFS) or (
        isinstance(node, ast.Attribute) and node.attr in _BACKEND_REFS)


def _name_comparisons(path: Path, names: set[str], root: Path = PACKAGE) -> list[str]:
    """`config.trainer == "sd-scripts"`, `backend in ("native", ...)`, `match config.trainer: case "native"`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and any(_is_backend_ref(side) for side in (node.left, *node.comparators)):
            for side in (node.left, *node.comparators):
                elements = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(e, ast.Constant) and e.value in names for e in elements):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
        elif isinstance(node, ast.Match) and _is_backend_ref(node.subject):
            if any(isinstance(c.pattern, ast.MatchValue) and getattr(c.pattern.value, "value", None) in names for c in node.cases):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_nothing_outside_the_registry_branches_on_a_backend_name(tmp_path):
    # models/ asks the backend table for the layout it downloads (`models download --backend`).
    sources = [p for p in package_modules(PACKAGE) if p != REGISTRY]
    assert len(sources) > 50 and {PACKAGE / "flows" / "train_lora.py", PACKAGE / "models" / "download.py"} <= set(sources)
    assert [hit for path in sources for hit in _name_comparisons(path, set(BACKENDS))] == []
    planted = tmp_path / "planted.py"  # the check itself finds a branch
    planted.write_text('if config.trainer == "sd-scripts" or backend in ("native",) or attention_backend == "native":\n'
                       '    pass\nmatch eff.backend:\n    case "native":\n        pass\n')
    assert len(_name_comparisons(planted, set(BACKENDS), root=tmp_path)) == 3


def test_events_have_one_name_per_field_and_survive_the_line():
    step = Step(step=12, total_steps=24, loss=0.25, sec_per_step=0.5, epoch=1)
    back = Event.from_line(step.to_line())
    assert back == step and isinstance(back, Step)
    assert json.loads(step.to_line())["event"] == "step" and "total" not in json.loads(step.to_line())
    # A newer writer's extra field is left out; an unknown kind, a fragment or a missing required field is no event.
    done = Event.from_line('{"event": "done", "time": 5, "lora": "/o/x.safetensors", "step": 3, "new_field": 1}')
    assert done == Done(lora="/o/x.safetensors", step=3, time=5)
    assert Event.from_line('{"event": "teleport", "step": 1}') is None
    assert Event.from_line('{"event": "step", "loss": 0.1}') is None  # a step without its step
    assert Event.from_line('{"event": "ste') is None


def test_json_lines_arrive_whole_whatever_the_chunks():
    lines = "".join(e.to_line() + "\n" for e in (Plan(total_steps=4), Step(step=2, total_steps=4),
                                                 Checkpoint(kind="state", path="/s", step=2)))
    for size in (1, 7, len(lines)):
        parser = JsonLinesParser()
        events = [e for i in range(0, len(lines), size) for e in parser.feed(lines[i : i + size])]
        assert [type(e) for e in events] == [Plan, Step, Checkpoint] and events[2].path == "/s"


def _job(tmp_path: Path, trainer: str, **fields) -> TrainJob:
    config = TrainingConfig(dataset="d", trainer=trainer, work_dir=str(tmp_path / "work"))
    return TrainJob(config=config.model_dump(mode="json"), items=[], models_dir=None, work_dir=str(tmp_path / "work"),
                    output_dir=str(tmp_path / "out"), **fields)


def test_each_backend_names_what_it_lacks_and_starts_its_own_entry(tmp_path):
    with pytest.raises(NotBuiltError, match="Diffusers-format model folder"):
        backend_for("native").prepare(_job(tmp_path, "native"), None)
    with pytest.raises(NotBuiltError, match="missing: dataset_dir, dit, text_encoder, vae"):
        backend_for("sd-scripts").prepare(_job(tmp_path, "sd-scripts"), None)
    for name, module in (("native", "anima_lora_flow.trainer"), ("sd-scripts", "anima_lora_flow.trainer.sdscripts")):
        argv = backend_for(name).command(tmp_path / "job.json", tmp_path / "events.jsonl")
        assert argv[:3] == [sys.executable, "-m", module] and argv[argv.index("--job") + 1] == str(tmp_path / "job.json")


def test_the_job_file_round_trips_for_both_backends(tmp_path):
    job = _job(tmp_path, "sd-scripts", dataset_dir="/d", subsets=[("/d/0/a", 5)], dit="/m/dit", text_encoder="/m/te",
               vae="/m/vae", precision="bf16", total_steps=8, resume_state="/r", resume_step=4)
    assert TrainJob.load(job.save(tmp_path / "job.json")) == job


def test_resume_points_and_outputs_are_read_the_backend_s_way(tmp_path):
    native, sd = backend_for("native"), backend_for("sd-scripts")
    state = tmp_path / "out" / "state" / "step_00000006"
    state.mkdir(parents=True)
    (state / "progress.json").write_text(json.dumps({"global_step": 6}))
    kohya_state = tmp_path / "out" / "my_lora-000001-state"
    kohya_state.mkdir()
    (kohya_state / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": 4}))
    for name in ("my_lora-000001.safetensors", "my_lora.safetensors", "my_lora-000001.kohya.safetensors"):
        (tmp_path / "out" / name).write_bytes(b"x")
    assert (native.resume_step(state), sd.resume_step(kohya_state)) == (6, 4)
    native_out, sd_out = native.outputs(tmp_path / "out", "my_lora"), sd.outputs(tmp_path / "out", "my_lora")
    assert native_out.final_lora == sd_out.final_lora == tmp_path / "out" / "my_lora.safetensors"
    assert native_out.epoch_loras == [tmp_path / "out" / "my_lora-000001.safetensors"]
    assert (native_out.states, sd_out.states) == ([state], [kohya_state])
