"""The `anima-lora validate SOURCE` command: run the dataset intake and print its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import TrainingConfig, cache_root
from ..core.dataset_report import DatasetError
from ..errors import UserInputError, setting
from ..storage.location import ensure_cache_folder, ensure_local_folder
from .intake import prepare_dataset


def add_validate_parser(subparsers) -> None:
    """Register `validate SOURCE [--json] [--work-dir DIR] [--resolution N] [--repeats N] [--models-dir DIR]`."""
    parser = subparsers.add_parser(
        "validate",
        help="check a dataset (folder, .zip, Drive link, URL) and report what will be trained",
        description="Fetch and check a dataset without training. Exit code 0: trainable; 2: not trainable.",
    )
    parser.add_argument("source", metavar="SOURCE", help="a folder, a .zip, a Google Drive link or id, an http(s) or fsspec URL")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder for downloads and extraction")
    parser.add_argument("--resolution", type=int, default=768, help="training resolution for the bucket histogram")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per image (kohya N_name folders override it)")
    parser.add_argument(
        "--models-dir", type=Path, default=None,
        help="a Diffusers-format Anima folder whose tokenizers count caption tokens exactly (default: the downloaded models, if any)",
    )
    parser.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """Print the report (text or JSON); 0 when something is trainable, 2 with a one-line reason otherwise."""
    work_dir = args.work_dir or cache_root() / "validate"
    try:
        check_setting_bounds(args, "resolution", "repeats")
        if args.work_dir:
            ensure_local_folder(work_dir, setting("work_dir"))
        else:
            ensure_cache_folder(work_dir, label="work folder", alternative=f", or pass {setting('work_dir')}")
        report = prepare_dataset(args.source, work_dir, resolution=args.resolution, repeats=args.repeats, models_dir=args.models_dir)
    except DatasetError as exc:
        if exc.report is not None:  # show why every file was skipped before the verdict
            print(exc.report.model_dump_json(indent=2) if args.json else exc.report.to_text())
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.model_dump_json(indent=2) if args.json else report.to_text())
    return 0


def check_setting_bounds(args: argparse.Namespace, *names: str) -> None:
    """Refuse settings outside TrainingConfig's bounds, so validate never reports on settings train would reject.

    Raises:
        UserInputError: one line naming the setting, its value and the allowed range.
    """
    for name in names:
        value = getattr(args, name)
        low, high = _field_bounds(name)
        if (low is not None and value < low) or (high is not None and value > high):
            raise UserInputError(f"{setting(name, value)} is out of range; use a value from {low} to {high} (as train does)",
                                 field=name)


def _field_bounds(name: str) -> tuple[int | None, int | None]:
    """(ge, le) of a TrainingConfig field: the one place the limits are written."""
    low = high = None
    for rule in TrainingConfig.model_fields[name].metadata:
        low = getattr(rule, "ge", None) if getattr(rule, "ge", None) is not None else low
        high = getattr(rule, "le", None) if getattr(rule, "le", None) is not None else high
    return low, high
