"""The `accelerate launch ... anima_train_network.py` command line (seed-behaviour §4)."""

from __future__ import annotations

import shlex
from pathlib import Path


def build_command(
    sd_scripts_dir: str | Path,
    training_toml_path: str | Path,
    dataset_toml_path: str | Path,
    python: str = "accelerate",
    validation_fix: bool = False,
) -> list[str]:
    """The launch command; every setting travels in the two TOML files.

    `python` is the `accelerate` executable, or a Python interpreter (a name starting with
    "python"), which then runs accelerate's launcher as a module. `--console_log_simple` makes
    sd-scripts log plain lines on stdout instead of rich's wrapped stderr output. `validation_fix`
    runs the script through validating_train_network.py, which fixes sd-scripts' validation for
    Anima (it crashes at 48d368fa); only a run that validates needs it.
    """
    script = [str(Path(sd_scripts_dir) / "anima_train_network.py")]
    if validation_fix:
        script = [str(Path(__file__).with_name("validating_train_network.py")), str(sd_scripts_dir)]
    if Path(python).name.startswith("python"):
        launcher = [str(python), "-m", "accelerate.commands.launch"]
    else:
        launcher = [str(python), "launch"]
    return [
        *launcher,
        "--num_cpu_threads_per_process",
        "1",
        *script,
        "--config_file",
        str(training_toml_path),
        "--dataset_config",
        str(dataset_toml_path),
        "--console_log_simple",
    ]


def format_command(cmd: list[str]) -> str:
    """Shell-quoted command, for printing and `--dry-run`."""
    return shlex.join(cmd)
