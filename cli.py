"""The `anima-lora` command. Exit codes: 0 success, 1 training or runtime failure, 2 bad input."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from .config import TrainingConfig, canonical_choice, load_config_file, unwrap_optional
from .dataset.commands import add_validate_parser
from .errors import EXIT_BAD_INPUT, EXIT_OK, UserInputError, error_line, exit_code, is_user_error, one_line, speaking_to
from .models.commands import add_models_parser

DESCRIPTION = """\
Train Anima LoRAs on Colab, Kaggle or your own GPU, as a resumable Prefect flow.

Start here:
  anima-lora demo                      train a tiny LoRA on generated data (CPU, a few minutes)
  anima-lora validate ./my_dataset     check a dataset before spending GPU time
  anima-lora plan ./my_dataset         steps, time, sessions and memory for your GPU
  anima-lora train --dataset ./my_dataset --storage /content/drive/MyDrive/lora_training/output
Run the same train command again after a disconnect: it resumes from the last saved state.
"""


# --- config flags -----------------------------------------------------------------------------
def add_config_flags(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """One kebab-case flag per TrainingConfig field; unset flags leave the file/default value alone."""
    group = parser.add_argument_group("training settings (defaults: the seed notebook's)")
    group.add_argument("--config", metavar="FILE", help="read settings from a .toml or .json file, one top-level key per "
                       "setting with underscores (network_dim = 8); flags override it")
    for name, field in TrainingConfig.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = unwrap_optional(field.annotation)
        help_text = field.description
        if field.default not in (None, [], "", PydanticUndefined) and not field.is_required():  # default_factory: no default shown
            shown = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
            help_text = f"{help_text} [default: {shown}]"  # a tuple as typed on the command line, not its repr
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is Literal:
            choices = typing.get_args(annotation)
            kwargs.update(choices=list(choices), type=_choice_of(choices))  # AdamW8bit and adamw8bit alike
        elif typing.get_origin(annotation) is tuple:
            kwargs.update(nargs=2, type=float, metavar=("B1", "B2"))
        elif annotation in (int, float):
            kwargs.update(type=annotation, metavar=annotation.__name__.upper())
        else:  # a field may name what it holds (a FILE) in its json_schema_extra
            kwargs["metavar"] = (field.json_schema_extra or {}).get("metavar", "TEXT")
        group.add_argument(flag, **kwargs)


def _choice_of(choices: tuple[str, ...]):
    def choice(text: str) -> str:
        return canonical_choice(choices, text)

    return choice


def _problem(error: dict) -> str:
    """Pydantic's message for one error, with the value a config file gave when its type was wrong."""
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("int_type", "float_type", "bool_type", "string_type"):
        given = error["input"]
        message += f", got {json.dumps(given) if isinstance(given, (bool, int, float, str)) else repr(given)}"
        if error["type"] == "bool_type":
            message += " (write true or false, without quotes)"
        elif isinstance(given, str) and error["type"] != "string_type":
            message += " (write the number without quotes)"
    return message


def config_from_args(args: argparse.Namespace, **overrides) -> TrainingConfig:
    config_file = getattr(args, "config", None)
    from_file: dict[str, Any] = {}
    if config_file:
        try:
            from_file = load_config_file(config_file)
        except (OSError, ValueError) as exc:
            raise UserInputError(str(exc)) from exc
    from_flags = {name: getattr(args, name) for name in TrainingConfig.model_fields if getattr(args, name, None) is not None}
    from_flags.update({k: v for k, v in overrides.items() if v is not None})
    values = {**from_file, **from_flags}
    if "dataset" not in values:
        in_file = f", or write dataset = \"...\" in {config_file}" if config_file else ""
        raise UserInputError(f"no dataset given: pass --dataset PATH_OR_URL (a folder, a .zip, a Drive link or a URL){in_file}")
    try:
        return TrainingConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = _problem(first)
        field = str(first["loc"][0]) if first["loc"] else ""
        if field not in TrainingConfig.model_fields:  # a cross-field check: its message names the flags
            raise UserInputError(message) from exc
        if field in from_file and field not in from_flags:  # blame the line the user wrote, not a flag never typed
            raise UserInputError(f"{config_file}: {field}: {message}") from exc
        raise UserInputError(f"--{field.replace('_', '-')}: {message}") from exc


# --- commands ---------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    preflight(config)
    if args.dry_run:
        return dry_run(config, as_json=args.json)
    result = run_flow(config, verbose=args.verbose)
    _print_result(config, result, as_json=args.json)
    return EXIT_OK


def dry_run(config: TrainingConfig, *, as_json: bool) -> int:
    """The flow's stages before the download as plain calls, without a Prefect server (seconds, not ten):
    the plan, whether the saved state would be resumed or refused, and sd-scripts' files."""
    from .runner.prepare import dry_run as prepare_dry_run
    from .runner.resume import ResumeRefusedError
    from .runner.train import new_run_id

    say = (lambda line: print(line, file=sys.stderr)) if as_json else print  # stdout stays JSON with --json
    try:
        result = prepare_dry_run(config, new_run_id(), log=say)
    except ResumeRefusedError as exc:
        print(f"would refuse: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_result(config, result, as_json=as_json)
    return EXIT_OK


def preflight(config: TrainingConfig) -> None:
    """Cheap checks of a user's input before a Prefect server is started (the flow repeats them)."""
    from .dataset.fetch import classify_source
    from .planner.preflight import check_supported, ensure_local_folders
    from .platforms.prefect_env import check_api_reachable
    from .storage import resolve_storage

    check_supported(config)
    # First: it mounts Drive, where the dataset may live. Nothing is created: a refused run leaves no folder.
    resolve_storage(config.storage, create=False)
    ensure_local_folders(config)
    classify_source(config.dataset)  # a mistyped local path fails here, not after the server start
    check_api_reachable()


def run_flow(config: TrainingConfig, *, dry_run: bool = False, verbose: bool = False) -> dict:
    """Run the flow under a local Prefect server; the console shows only the plan, progress, warnings and
    the summary unless `verbose` (Prefect's INFO lines reach the UI's run log either way)."""
    from .platforms.prefect_env import check_api_reachable, configure_prefect_environment
    from .ui.server import server_for_this_command

    configure_prefect_environment()
    check_api_reachable()  # a configured API that does not answer would fail the run later with a raw error
    # Before prefect is imported: it reads PREFECT_API_URL then. Our server survives a Ctrl-C.
    with server_for_this_command() as history:
        from prefect.events.worker import EventsWorker  # noqa: PLC0415 - prefect is imported only after its settings
        from prefect.logging.handlers import APILogWorker  # noqa: PLC0415

        from .flows.train_lora import train_lora  # noqa: PLC0415
        from .ui.console import quiet_console  # noqa: PLC0415 - imports prefect

        # Prefect's console handler sits on the root logger; its API handler sits on the run loggers,
        # so filtering the root's stream handlers leaves the UI's record of the failure whole.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.addFilter(_no_console_echo_of_user_errors)
        result = None
        try:
            with quiet_console(verbose=verbose):
                result = train_lora(config=config, dry_run=dry_run)
        except BaseException as exc:
            if is_user_error(exc):
                history = None  # a refused input stays one line
            raise
        finally:
            # The server stops when this block ends: logs and events (task runs are recorded from events)
            # still queued would fail with "Error logging to API", or be lost.
            APILogWorker.drain_all(timeout=5)
            EventsWorker.drain_all(timeout=5)
            if history is not None:
                print(history.describe(result.get("flow_run_id") if isinstance(result, dict) else None), file=sys.stderr)
        return result


_USER_ERROR_RUNS: set[str] = set()  # ids of the task and flow runs that failed with a user error


def _no_console_echo_of_user_errors(record: logging.LogRecord) -> bool:
    """A user's mistake is the CLI's one `error:` line; Prefect's copies of it stay in the UI only.

    Prefect reports a failure up to three times: the exception (the record carries the exception
    object), then the task's and the flow's final state (records carrying only the run's ids). The run
    whose exception record held a user error is remembered by its id, so its final-state record is
    recognised by that id, not by parsing the state's text.
    """
    own_run = getattr(record, "task_run_id", None) or getattr(record, "flow_run_id", None)
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and is_user_error(exc):
        if own_run:
            _USER_ERROR_RUNS.add(own_run)
        return False
    return own_run is None or own_run not in _USER_ERROR_RUNS


def _print_result(config: TrainingConfig, result: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    from .ui.summary import summary_text

    if result.get("outcome") == "dry-run" and result.get("plan"):
        from .planner.plan import Plan

        print(Plan.model_validate(result["plan"]).to_text())  # what --dry-run promises: the plan, then the summary
    if result.get("outcome") == "dry-run" and result.get("resume"):
        print(result["resume"]["would"])
    print(summary_text(config, result))


def cmd_validate(args: argparse.Namespace) -> int:
    from .dataset.commands import run_validate

    return run_validate(args)


def cmd_plan(args: argparse.Namespace) -> int:
    from .planner.commands import run_plan
    from .planner.preflight import check_supported, ensure_local_folders
    from .runner.prepare import dataset_report

    config = config_from_args(args, dataset=args.source)
    check_supported(config)  # the plan refuses what train would refuse
    ensure_local_folders(config)
    report = dataset_report(config)  # as train's dataset stage: the same settings and caption tokenizers
    steps_done, notes = _saved_progress(config, report) if {"storage", "project_name"} & config.model_fields_set else (0, [])
    return run_plan(config, report.samples_per_bucket(), gpu=args.gpu, as_json=args.json, steps_done=steps_done, notes=notes)


def _saved_progress(config: TrainingConfig, report) -> tuple[int, list[str]]:
    """(steps done, notes) of the state `train` would resume from this storage; read only, nothing written."""
    from .runner.resume import ResumeRefusedError, judge_resume
    from .storage import RunStore, resolve_location

    try:
        store = RunStore(resolve_location(config.storage), config.project_name)  # read only: nothing created
        if not store.fs.exists(store.root):
            return 0, []
        point = judge_resume(store, config, report.fingerprint)
    except ResumeRefusedError as exc:
        return 0, [f"train would refuse the saved state: {one_line(exc)}"]
    except (OSError, UserInputError) as exc:  # the plan stands without it; train will meet the storage itself
        return 0, [f"saved states in {config.storage} not read ({one_line(exc)}): counted from step 0"]
    if point.state is None:
        return 0, point.notes
    return point.step, [point.describe().splitlines()[0], *point.changes]


def cmd_models(args: argparse.Namespace) -> int:
    from .models.commands import run_models

    return run_models(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_config
    from .runner.resume import ResumeRefusedError

    config = demo_config(
        Path(args.work_dir) if args.work_dir else None, storage=args.storage, epochs=args.epochs, restart=args.restart
    )
    print(f"demo: tiny random Anima model and {config.dataset} (generated); storage {config.storage}")
    try:
        result = run_flow(config, verbose=args.verbose)
    except ResumeRefusedError as exc:
        # The runner's advice names train's flags; demo has no --project-name, and its own --restart.
        reason = str(exc).split("; run again with --restart")[0]
        elsewhere = "another --work-dir and --storage" if args.storage else "another --work-dir"
        raise UserInputError(f"{reason}; run `anima-lora demo --restart` to start over (old states are archived), "
                       f"or pass {elsewhere}") from exc
    _print_result(config, result, as_json=args.json)
    return EXIT_OK


# `demo`'s default --work-dir is ./anima-demo and its storage <work-dir>/runs: a new user's first
# `status demo` looks in train's ./anima-runs instead.
DEMO_STORAGE = "./anima-demo/runs"


def cmd_status(args: argparse.Namespace) -> int:
    from .storage import RunStore, resolve_location
    from .storage.status import list_projects, projects_text

    default_storage = args.storage == TrainingConfig.model_fields["storage"].default
    location = resolve_location(args.storage)
    if args.project is None:
        print(projects_text(list_projects(location), args.storage, as_json=args.json))
        if default_storage and not args.json and Path(DEMO_STORAGE).is_dir():
            print(f"the demo keeps its runs in {DEMO_STORAGE}: anima-lora status --storage {DEMO_STORAGE}")
        return EXIT_OK
    store = RunStore(location, args.project)
    if not store.fs.exists(store.root):
        if default_storage and (Path(DEMO_STORAGE) / args.project).is_dir():
            raise UserInputError(f"no project '{args.project}' in {args.storage}; the demo keeps its runs in {DEMO_STORAGE}: "
                                 f"anima-lora status {args.project} --storage {DEMO_STORAGE}")
        raise UserInputError(f"no project '{args.project}' in {args.storage}; run `anima-lora status --storage {args.storage}` "
                             "to list its projects, or check --storage")
    from .storage.status import status_text

    print(status_text(store, as_json=args.json))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .platforms.doctor import run_doctor

    return run_doctor(args)


def cmd_ui(args: argparse.Namespace) -> int:
    from .ui.server import run_ui

    return run_ui(args)


def cmd_notify(args: argparse.Namespace) -> int:
    from .ui.notify import run_notify

    return run_notify(args)


def cmd_auto_resume(args: argparse.Namespace) -> int:
    from .ui.notify import run_auto_resume

    return run_auto_resume(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .flows.serve import run_serve

    return run_serve(args)


def cmd_queue(args: argparse.Namespace) -> int:
    from .flows.queue import run_queue

    return run_queue(args)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return value


_positive_int.__name__ = "a positive whole number"  # argparse names the type in its message


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return value


class _SubcommandParser(argparse.ArgumentParser):
    """Refuses an unknown flag itself, so the error shows this command's usage, not `anima-lora COMMAND ...`."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:  # a subcommand takes every remaining argument: leftovers are mistakes, not the parent's
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def package_version() -> str:
    """The installed distribution's version; a checkout run without an install falls back to __version__."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anima-lora-flow")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anima-lora", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_SubcommandParser)

    train = sub.add_parser("train", help="train a LoRA (resumes automatically from --storage)",
                           description="Run the whole flow: validate, plan, download models, train, sync, publish.")
    add_config_flags(train)
    train.add_argument("--dry-run", action="store_true", help="stop before downloading models and print the plan")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.add_argument("--verbose", action="store_true", help="also print Prefect's INFO lines (always in the UI's run log)")
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
    demo.add_argument("--work-dir", metavar="DIR",
                      help="where the generated model, dataset, caches and runs go (default: ./anima-demo)")
    demo.add_argument("--storage", metavar="PATH_OR_URL", help="run store root (default: <work-dir>/runs)")
    demo.add_argument("--epochs", type=_positive_int, default=None, metavar="N", help="epochs to train (default 2)")
    demo.add_argument("--restart", action="store_true",
                      help="archive the demo's saved states and train from step 0 (a changed --epochs continues instead)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.add_argument("--verbose", action="store_true", help="also print Prefect's INFO lines (always in the UI's run log)")
    demo.set_defaults(func=cmd_demo)

    status = sub.add_parser("status", help="show the run training now and a project's states, checkpoints and runs "
                                           "(without PROJECT: list the projects in storage)")
    status.add_argument("project", metavar="PROJECT", nargs="?", default=None,
                        help="the --project-name used for training (my_lora unless set); omit it to list the projects")
    status.add_argument("--storage", default=TrainingConfig.model_fields["storage"].default, metavar="PATH_OR_URL",
                        help="the storage root used for training (default: train's, %(default)s)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)

    doctor = sub.add_parser("doctor", help="what this machine offers and what the flow will do about it")
    doctor.add_argument("--storage", metavar="PATH_OR_URL", help="also check this storage root")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)

    ui = sub.add_parser("ui", help="start a local Prefect server with its UI and point runs at it",
                        description="Start a local Prefect server with its UI; train runs started afterwards show up there.")
    ui.add_argument("--port", type=_port, default=4200, help="port for the UI and its API (default 4200)")
    ui.add_argument("--stop", action="store_true", help="stop the server started earlier")
    ui.set_defaults(func=cmd_ui)

    notify = sub.add_parser("notify", help="call a webhook when a training run fails or crashes (a Prefect automation)",
                            description="Create (or replace) a Prefect automation on the server runs report to "
                            "(`anima-lora ui`'s, or PREFECT_API_URL's) that POSTs a JSON message to a webhook when a "
                            "run of the training flow fails, crashes or times out.")
    what = notify.add_mutually_exclusive_group(required=True)
    what.add_argument("--webhook", metavar="URL",
                      help="the http(s) URL to POST the JSON message to (its `text` field is what Slack-style webhooks show)")
    what.add_argument("--remove", action="store_true", help="remove the automation and its webhook")
    notify.set_defaults(func=cmd_notify)

    auto = sub.add_parser("auto-resume", help="put a pool's training runs whose process died back in its queue, to resume",
                          description="Create (or replace) Prefect automations on the server runs report to "
                          "(`anima-lora ui`'s, or PREFECT_API_URL's): a deployment run of the training flow whose "
                          "heartbeats stop is marked Crashed, and a crashed run of the work pool is put back to "
                          "Scheduled (AwaitingRetry), so the next free worker resumes it from its storage.")
    auto.add_argument("--pool", metavar="NAME", help="the work pool whose crashed runs resume (required unless --remove)")
    auto.add_argument("--resumes", type=int, default=3, metavar="N",
                      help="put a run back at most N times; one that crashes on its (N+1)-th start stays Crashed (default 3)")
    auto.add_argument("--heartbeat-seconds", type=int, default=180, metavar="S",
                      help="the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY (default: Prefect's 180); a run is "
                      "crashed after 3 missed heartbeats")
    auto.add_argument("--remove", action="store_true",
                      help="remove the automations (of --pool only, when given)")
    auto.set_defaults(func=cmd_auto_resume)

    serve = sub.add_parser("serve", help="run training runs started from the Prefect UI's form on this machine",
                           description="Serve the training flow from this machine as the deployment "
                           "train-anima-lora/NAME, one run at a time per GPU, until Ctrl-C. Needs a Prefect server "
                           "that keeps running: `anima-lora ui` (started first), or PREFECT_API_URL.")
    serve.add_argument("--name", metavar="NAME", help="the deployment's name (default: serve-<hostname>)")
    serve.set_defaults(func=cmd_serve)

    queue = sub.add_parser("queue", help="train many LoRAs through a Prefect work pool, from a TOML file",
                           description="Submit one deployment run per entry of FILE ([[project]] tables, or one "
                           "[project] with a [grid] of settings) to a work pool. Running it again submits only the "
                           "entries that have not finished; --wait waits for them and publishes a table comparing them.")
    queue.add_argument("file", metavar="FILE.toml", help="the queue file (format: README, section A queue of LoRAs)")
    queue.add_argument("--pool", default="gpu-pool", help="the work pool whose workers train (default %(default)s)")
    queue.add_argument("--deployment", default="train-anima-lora", metavar="NAME",
                       help="the deployment to run (default %(default)s, prefect.yaml's); created on --pool when missing")
    queue.add_argument("--wait", action="store_true", help="wait for every entry to end, then publish the comparison table")
    queue.add_argument("--poll-seconds", type=float, default=5.0, metavar="S", help=argparse.SUPPRESS)
    queue.set_defaults(func=cmd_queue)
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
        with speaking_to("cli"):  # every message below names settings as this command's flags
            return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the CLI's last line of defence: one line
        print(error_line(exc, "cli"), file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
