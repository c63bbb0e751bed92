"""One error, three readers: the CLI reads a flag, a notebook its form field, the flow its parameter.
And the layers below the CLI never spell a setting as a flag themselves."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from package_sources import package_modules

from anima_lora_flow.cli import main
from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.errors import (
    NotBuiltError,
    TrainingError,
    UserInputError,
    audience_env,
    error_line,
    exit_code,
    render,
    setting,
    speaking_by_default,
    speaking_to,
)
from anima_lora_flow.models.download import validate_models_dir
from anima_lora_flow.storage.location import ensure_local_folder

PACKAGE = Path(__file__).resolve().parents[1]


def test_a_lower_layers_error_reads_as_each_front_end_names_the_setting(tmp_path):
    missing = tmp_path / "no-such-models"
    with pytest.raises(UserInputError) as info:
        validate_models_dir(missing)
    error = info.value
    assert error.field == "models_dir"
    tail = "does not exist; point it at a Diffusers-format Anima folder"
    assert render(error, "cli") == f"--models-dir {missing} {tail}"
    assert render(error, "notebook") == f"models_dir={missing} {tail}"
    assert render(error, "flow") == f"config.models_dir={missing} {tail}"
    assert str(error) == render(error, "cli")  # no front end chose: the CLI's spelling, as README documents it
    with speaking_to("flow"):
        assert str(error) == render(error, "flow")


def test_a_setting_without_a_value_and_a_switch(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(UserInputError) as info:
        ensure_local_folder(a_file, setting("work_dir"))
    assert render(info.value, "cli") == f"--work-dir {a_file} is a file, not a folder; pass a folder"
    assert render(info.value, "notebook") == f"work_dir {a_file} is a file, not a folder; pass a folder"
    assert render(info.value, "flow") == f"config.work_dir {a_file} is a file, not a folder; pass a folder"
    switch = f"{setting('gradient_checkpointing', True)} or {setting('save_kohya_lora', False)} or {setting('dry_run', True)}"
    assert render(switch, "cli") == "--gradient-checkpointing or --no-save-kohya-lora or --dry-run"
    assert render(switch, "flow") == "config.gradient_checkpointing=True or config.save_kohya_lora=False or dry_run=True"


def test_the_cli_prints_the_flag_and_exits_2(tmp_path, capsys):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    (tmp_path / "ds").mkdir()
    code = main(["validate", str(tmp_path / "ds"), "--work-dir", str(a_file)])
    assert (code, capsys.readouterr().err) == (2, f"error: --work-dir {a_file} is a file, not a folder; pass a folder\n")


def test_the_flow_speaks_to_its_parameters_unless_an_edge_chose():
    error = UserInputError(f"lower {setting('learning_rate')}")
    with speaking_by_default("flow"):
        assert str(error) == "lower config.learning_rate"
    with speaking_to("cli"), speaking_by_default("flow"):
        assert str(error) == "lower --learning-rate"


def test_a_child_process_speaks_to_its_parents_reader():
    # The trainer runs as a subprocess: its warnings and advice must reach a notebook as form fields too.
    child = [sys.executable, "-c", "from anima_lora_flow.errors import render, setting; print(render(setting('resolution', 512)))"]
    with speaking_to("notebook"):
        env = {**os.environ, **audience_env()}
    assert subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout == "resolution=512\n"
    plain = {k: v for k, v in os.environ.items() if k != "ANIMA_LORA_AUDIENCE"}
    assert subprocess.run(child, env=plain, capture_output=True, text=True, check=True).stdout == "--resolution 512\n"


def _form_fields(notebook: Path) -> dict[str, str]:
    """{config keyword: the notebook variable passed to it} of the notebook's TrainingConfig(...) call."""
    nb = nbformat.read(notebook, as_version=4)
    magic = re.compile(r"^(\s*)[%!].*$", re.MULTILINE)  # `%pip install` is IPython's, not Python's
    code = "\n".join(magic.sub(r"\1pass", cell.source) for cell in nb.cells if cell.cell_type == "code")
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "TrainingConfig"]
    assert calls, notebook
    return {kw.arg: ast.unparse(kw.value) for call in calls for kw in call.keywords}


@pytest.mark.parametrize("name", ["anima_lora_colab.ipynb", "anima_lora_kaggle.ipynb"])
def test_the_notebooks_form_fields_carry_the_config_fields_names(name):
    # Why a notebook reads `learning_rate`: the form field a user edits is the config field it fills.
    fields = _form_fields(PACKAGE / "notebooks" / name)
    assert "learning_rate" in fields and set(fields) <= set(TrainingConfig.model_fields)
    for field, value in fields.items():
        assert value == field or value.startswith(f"{field} or "), (field, value)  # num_gpus or <all GPUs>


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (UserInputError(f"bad {setting('network_dim', 0)}"), 2, "error: bad --network-dim 0"),
        (type("DatasetError", (UserInputError,), {})("no images"), 2, "error: no images"),  # a subclass
        (NotBuiltError(f"{setting('sample_every_n_epochs', 0)}"), 2, "error: not built yet: --sample-every-n-epochs 0"),
        (TrainingError(f"diverged; lower {setting('learning_rate')}"), 1,
         "error: TrainingError: diverged; lower --learning-rate"),
        (RuntimeError("boom\n  twice"), 1, "error: RuntimeError: boom twice"),
        (KeyboardInterrupt(), 130, "interrupted: the trainer was stopped; run the same command again to resume"),
    ],
)
def test_one_mapping_from_errors_to_exit_codes_and_lines(error, code, line):
    assert (exit_code(error), error_line(error, "cli")) == (code, line)


# --- no flag spelled below the CLI -------------------------------------------------------------
# Flags stay legal where they are a command line, not a setting's name in prose: argv for another
# program (sd-scripts, git, pip, our own trainer subprocess), argparse's definitions of a subcommand's
# own flags, and a shell command a message tells the user to run.
_NOT_SCANNED = {
    "cli.py": "the CLI itself: flags are its spelling",
    "errors.py": "the renderer: it is where `--` + a setting's name is made",
}
_ALLOWED = {
    ("models/commands.py", "--durable-cache"): "the `models` subcommand's help text names its own flag",
}
_ARGPARSE = {"add_argument", "add_parser", "add_argument_group", "add_mutually_exclusive_group", "ArgumentParser"}
_COMMAND_LINE = re.compile(r"(?:anima-lora|pip install|python -m|prefect|git) [^;`'\"\n]*")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _strings(tree: ast.AST):
    """(line, text) of every string literal that is not a docstring, an argv element or argparse's; an
    f-string is one text with `{}` for its values."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in _ARGPARSE:
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, (ast.List, ast.Tuple)):  # an argv: ["--job", path]
            skip.update(id(e) for e in node.elts if isinstance(e, ast.Constant) and str(e.value).startswith("-"))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
            if id(node) not in skip:
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                yield node.lineno, text
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


# Only a setting's flag is the audience's to spell: a subcommand's own flag (`queue --wait`) or a
# prompt file's option (`--w 1024`) reads the same to everyone.
_SETTING_FLAGS = {"--" + name.replace("_", "-") for name in TrainingConfig.model_fields}


def _flags_in_prose(text: str) -> list[str]:
    commands = [m.span() for m in _COMMAND_LINE.finditer(text)]
    return [m.group() for m in _FLAG.finditer(text)
            if m.group() in _SETTING_FLAGS and not any(a <= m.start() < b for a, b in commands)]


def _modules_below_the_cli():
    for path in package_modules(PACKAGE):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in _NOT_SCANNED:
            yield rel, path


def test_no_module_below_the_cli_spells_a_setting_as_a_flag():
    found = [
        f"{rel}:{line}: {flag} in {text[:80]!r}"
        for rel, path in _modules_below_the_cli()
        for line, text in _strings(ast.parse(path.read_text(encoding="utf-8")))
        for flag in _flags_in_prose(text)
        if (rel, flag) not in _ALLOWED
    ]
    assert not found, "name settings with errors.setting(...), not a flag:\n" + "\n".join(found)


def test_the_scan_finds_a_planted_flag():
    planted = 'raise UserInputError(f"use --learning-rate {x}")\nparser.add_argument("--job")\ncmd = ["--quiet"]\n'
    texts = [text for _, text in _strings(ast.parse(planted))]
    assert [flag for text in texts for flag in _flags_in_prose(text)] == ["--learning-rate"]
    assert _flags_in_prose("run `anima-lora ui --stop --seed 1` first; or pass --seed") == ["--seed"]
    assert _flags_in_prose("a prompt line such as `a cat --w 512`, or queue --wait") == []
