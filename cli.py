"""The `anima-lora` command. Exit codes: 0 success, 1 training or runtime failure, 2 bad input."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from .config import TrainingConfig, load_config_file
from .dataset.commands import add_validate_parser
from .models.commands import add_models_parser
from .errors import NotBuiltError, UserInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

DESCRIPTION = """\
Train Anima LoRAs on Colab, Kaggle or your own GPU, as a resumable Prefect flow.

Start here:
  anima-lora demo                      train a tiny LoRA on generated data (CPU, a few minutes)
  anima-lora validate ./my_dataset     check a dataset before spending GPU time
  anima-lora plan ./my_dataset         steps, time, sessions and memory for your GPU
  anima-lora train --dataset ./my_dataset --storage /content/drive/MyDrive/lora_training/output
Run the same train command again after a disconnect: it resumes from the last saved state.
"""


class BadInput(Exception):
    """Raised inside the CLI for a bad flag; becomes exit code 2."""


# --- config flags -----------------------------------------------------------------------------
def _unwrap_optional(annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One kebab-case flag per TrainingConfig field; unset flags leave the file/default value alone."""
    group = parser.add_argument_group("training settings (defaults: the seed notebook's)")
    group.add_argument("--config", metavar="FILE", help="read settings from a .toml or .json file; flags override it")
    for name, field in TrainingConfig.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = _unwrap_optional(field.annotation)
        help_text = field.description
        if field.default not in (None, [], PydanticUndefined) and not field.is_required():  # default_factory: no default shown
            help_text = f"{help_text} [default: {field.default}]"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif typing.get_origin(annotation) is tuple:
            kwargs.update(nargs=2, type=float, metavar=("B1", "B2"))
        elif typing.get_origin(annotation) is list:
            kwargs.update(action="append", metavar="TEXT")
        elif annotation in (int, float):
            kwargs.update(type=annotation, metavar=annotation.__name__.upper())
        else:
            kwargs["metavar"] = "TEXT"
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainingConfig:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            values.update(load_config_file(args.config))
        except (OSError, ValueError) as exc:
            raise BadInput(str(exc)) from exc
    for name in TrainingConfig.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "dataset" not in values:
        raise BadInput("no dataset given: pass --dataset PATH_OR_URL (a folder, a .zip, a Drive link or a URL)")
    try:
        return TrainingConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        flag = "--" + where.replace("_", "-") if where in TrainingConfig.model_fields else where
        raise BadInput(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from exc


# --- commands ---------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    preflight(config)
    result = run_flow(config, dry_run=args.dry_run)
    _print_result(config, result, as_json=args.json)
    return EXIT_OK


def preflight(config: TrainingConfig) -> None:
    """Cheap checks of a user's input before a Prefect server is started (the flow repeats them)."""
    from .storage import ensure_local_folder, resolve_storage
    from .tasks.preflight import check_supported

    check_supported(config)
    resolve_storage(config.storage)
    ensure_local_folder(config.resolved_work_dir(), "--work-dir")


def run_flow(config: TrainingConfig, *, dry_run: bool = False) -> dict:
    from .prefect_env import configure_prefect_environment
    from .ui.server import server_for_this_command

    configure_prefect_environment()
    # Before prefect is imported: it reads PREFECT_API_URL then. Our server survives a Ctrl-C.
    with server_for_this_command():
        from .flows.train_lora import train_lora  # noqa: PLC0415 - prefect is imported only after its settings

        for handler in logging.getLogger().handlers:
            handler.addFilter(_no_traceback_for_user_errors)
        return train_lora(config=config, dry_run=dry_run)


def _no_traceback_for_user_errors(record: logging.LogRecord) -> bool:
    """A user's mistake is one line on the console, not a Prefect traceback (the UI keeps the full record)."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, (UserInputError, NotBuiltError)):
        record.exc_info, record.exc_text = None, None
    return True


def _print_result(config: TrainingConfig, result: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    from .ui.summary import summary_text

    if result.get("outcome") == "dry-run" and result.get("plan"):
        from .planner.plan import Plan

        print(Plan.model_validate(result["plan"]).to_text())  # what --dry-run promises: the plan, then the summary
    print(summary_text(config, result))


def cmd_validate(args: argparse.Namespace) -> int:
    from .dataset.commands import run_validate

    return run_validate(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from .dataset.intake import prepare_dataset
    from .planner.commands import run_plan
    from .tasks.preflight import check_supported

    config = config_from_args(args, dataset=args.source)
    check_supported(config)  # the plan refuses what train would refuse
    report = prepare_dataset(
        config.dataset, config.resolved_work_dir(), resolution=config.resolution,
        min_bucket_reso=config.min_bucket_reso, max_bucket_reso=config.max_bucket_reso,
        bucket_reso_steps=config.bucket_reso_steps, repeats=config.repeats,
    )
    return run_plan(config, report.samples_per_bucket(), gpu=args.gpu, as_json=args.json)


def cmd_models(args: argparse.Namespace) -> int:
    from .models.commands import run_models

    return run_models(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_config

    config = demo_config(Path(args.work_dir) if args.work_dir else None, storage=args.storage, epochs=args.epochs)
    print(f"demo: tiny random Anima model and {config.dataset} (generated); storage {config.storage}")
    result = run_flow(config)
    _print_result(config, result, as_json=args.json)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .storage import RunStore, resolve_location
    from .storage.status import status_text

    store = RunStore(resolve_location(args.storage), args.project)
    if not store.fs.exists(store.root):
        raise BadInput(f"no project '{args.project}' in {args.storage}; check --storage and the project name")
    print(status_text(store, as_json=args.json))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .platforms.doctor import run_doctor

    return run_doctor(args)


def cmd_ui(args: argparse.Namespace) -> int:
    from .ui.server import run_ui

    return run_ui(args)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return value


_positive_int.__name__ = "a positive whole number"  # argparse names the type in its message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anima-lora", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    train = sub.add_parser("train", help="train a LoRA (resumes automatically from --storage)",
                           description="Run the whole flow: validate, plan, download models, train, sync, publish.")
    add_config_flags(train)
    train.add_argument("--dry-run", action="store_true", help="stop before downloading models and print the plan")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=cmd_train)

    add_validate_parser(sub)
    sub.choices["validate"].set_defaults(func=cmd_validate)

    plan = sub.add_parser("plan", help="how many steps, how long, how many sessions, how much memory",
                          description="Plan a run on a dataset without training.")
    plan.add_argument("source", metavar="SOURCE", help="dataset folder, .zip, Drive link or URL")
    plan.add_argument("--gpu", help="plan for a named GPU (T4, L4, A100, H100, ...) instead of the detected one")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_config_flags(plan, skip=("dataset",))
    plan.set_defaults(func=cmd_plan)

    add_models_parser(sub)
    sub.choices["models"].set_defaults(func=cmd_models)

    demo = sub.add_parser("demo", help="train a tiny LoRA on a generated dataset (CPU is enough)",
                          description="Generate a tiny random Anima model and a small dataset, then run the full flow.")
    demo.add_argument("--work-dir", help="where the generated model, dataset, caches and runs go (default: ./anima-demo)")
    demo.add_argument("--storage", help="run store root (default: <work-dir>/runs)")
    demo.add_argument("--epochs", type=_positive_int, default=None, help="epochs to train (default 2)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="show a project's states, checkpoints and runs in storage")
    status.add_argument("project", metavar="PROJECT")
    status.add_argument("--storage", required=True, help="the storage root used for training")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    doctor = sub.add_parser("doctor", help="what this machine offers and what the flow will do about it")
    doctor.add_argument("--storage", help="also check this storage root")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)

    ui = sub.add_parser("ui", help="start a local Prefect server with its UI and point runs at it")
    ui.add_argument("--port", type=int, default=4200)
    ui.add_argument("--stop", action="store_true", help="stop the server started earlier")
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for a bad flag
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except (BadInput, UserInputError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NotBuiltError as exc:  # the user asked for something this version cannot do: bad input, not a crash
        print(f"error: not built yet: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: the trainer was stopped; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: one line, exit 1
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
