"""`anima-lora queue FILE.toml`: many LoRAs trained unattended by the workers of a Prefect work pool.

The file holds either a list of projects (`[[project]]` tables of settings) or one project with a grid
of settings (`[project]` and `[grid]`, one entry per combination of the grid's values). Shared settings
may go in a `[defaults]` table. Every entry is one deployment run of the training flow with its own
project name, so its own folder in storage: each resumes on its own, like any other run.

The queue remembers nothing itself: which entries are done is read from the server's flow runs (each
run carries a tag naming its project), so a queue interrupted and started again submits only the
entries that have neither finished nor a run queued or training now. A run left Running by a worker
that died is first closed (Crashed) when its process is known to be gone, so its entry is submitted
again and resumes from its storage.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import TrainingConfig, project_name_problem
from ..errors import EXIT_INTERRUPTED, UserInputError
from ..ui.artifacts import artifact_key

QUEUE_TAG = "anima-lora-queue"
PROJECT_TAG = "anima-project:"  # + the project name: how a later queue finds an entry's runs
FLOW_NAME = "train-anima-lora"  # flows/train_lora.py's @flow name: the first half of a deployment's name
# Settings holding local paths: a relative one is resolved against the queue file's folder, since the
# worker's working directory (a temporary folder, for a process worker) means nothing to the user.
PATH_FIELDS = ("dataset", "storage", "work_dir", "models_dir", "models_cache")
TABLES = ("project", "grid", "defaults")
# States after which a run of an entry still counts as in the queue: submitting again would train twice.
WAITING_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
STOPPED_STATE_NAME = "Stopped"  # a Completed run that saved its state at a deadline: resumable, not finished


@dataclass(frozen=True)
class QueueEntry:
    """One LoRA of the queue: its position in the file (from 1) and its validated settings."""

    number: int
    config: TrainingConfig

    @property
    def project(self) -> str:
        return self.config.project_name


@dataclass
class EntryRuns:
    """What the server knows of one entry: its flow runs of the deployment, newest first."""

    entry: QueueEntry
    runs: list = field(default_factory=list)

    @property
    def active(self):
        return next((run for run in self.runs if run.state_type and run.state_type.value in WAITING_STATES), None)

    @property
    def finished(self) -> bool:
        newest = self.runs[0] if self.runs else None
        return (newest is not None and newest.state_type is not None and newest.state_type.value == "COMPLETED"
                and newest.state_name != STOPPED_STATE_NAME)


# --- the file --------------------------------------------------------------------------------------
def read_queue_file(path: str | Path) -> list[QueueEntry]:
    """The entries of a queue file, each validated as a TrainingConfig, with distinct project names.

    Raises:
        UserInputError: the file is missing or not TOML, its layout is wrong, a grid is malformed, an
            entry's setting is invalid (the message names the entry and the setting), or two entries
            share a project name.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"queue file not found: {path}; pass the path of a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text; save the file as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"{path}: not valid TOML: {exc}; fix that line") from exc
    unknown = [key for key in data if key not in TABLES]
    if unknown:
        raise UserInputError(f"{path}: unknown top-level key {unknown[0]!r}; a queue file holds [[project]] tables, "
                             "or one [project] with a [grid], and optionally [defaults]")
    defaults = _table(data, "defaults", path)
    projects, grid = data.get("project"), data.get("grid")
    if isinstance(projects, list):
        if grid is not None:
            raise UserInputError(f"{path}: a [grid] goes with one [project] table, not with a list of [[project]] tables")
        raw = [{**defaults, **_table({"project": p}, "project", path)} for p in projects]
    elif isinstance(projects, dict):
        raw = expand_grid({**defaults, **projects}, _table(data, "grid", path), path)
    else:
        raise UserInputError(f"{path}: no projects; add [[project]] tables (one per LoRA), or one [project] with a "
                             "[grid] such as network_dim = [8, 16]")
    if not raw:
        raise UserInputError(f"{path}: no projects; add at least one [[project]] table")
    entries = [_entry(number, values, path) for number, values in enumerate(raw, 1)]
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.project in seen:
            raise UserInputError(f"{path}: entries {seen[entry.project]} and {entry.number} both have project_name "
                                 f"{entry.project!r}; each LoRA needs its own project_name (its own folder in storage)")
        seen[entry.project] = entry.number
    return entries


def expand_grid(base: dict[str, Any], grid: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """One entry per combination of the grid's values (the file's key order), named `<project>-<key><value>...`."""
    for key, values in grid.items():
        if key not in TrainingConfig.model_fields:
            raise UserInputError(f"{path}: [grid] {key}: unknown setting; the keys are the flags of "
                                 "`anima-lora train --help` with underscores, as in network_dim")
        if key == "project_name":
            raise UserInputError(f"{path}: [grid] project_name: the grid names its entries itself; set project_name "
                                 "in [project], or list the projects as [[project]] tables")
        if not isinstance(values, list) or not values:
            raise UserInputError(f"{path}: [grid] {key} must be a list of values, such as {key} = [8, 16]")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserInputError(f"{path}: [grid] {key} lists a value twice; keep one of them")
    base_name = base.get("project_name", TrainingConfig.model_fields["project_name"].default)
    if not grid:
        return [base]
    entries = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        suffix = "-".join(f"{key}{_name_part(value)}" for key, value in values.items())
        entries.append({**base, **values, "project_name": f"{base_name}-{suffix}"})
    return entries


def _name_part(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"  # 0.0001 -> 0.0001, 1e-05 -> 1e-05: short, and the same on every run
    return re.sub(r"[^A-Za-z0-9._]+", "_", str(value)).strip("_.") or "_"


def _table(data: dict, key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserInputError(f"{path}: {key} must be a table ([{key}] with settings under it)")
    return value


def _entry(number: int, values: dict[str, Any], path: Path) -> QueueEntry:
    name = values.get("project_name", TrainingConfig.model_fields["project_name"].default)
    where = f"{path}: entry {number} ({name})"
    values = {key: _absolute(value, path) if key in PATH_FIELDS else value for key, value in values.items()}
    unknown = [key for key in values if key not in TrainingConfig.model_fields]
    if unknown:
        raise UserInputError(f"{where}: unknown setting {unknown[0]!r}; the keys are the flags of "
                             "`anima-lora train --help` with underscores, as in network_dim")
    if "dataset" not in values:
        raise UserInputError(f"{where}: no dataset; write dataset = \"...\" in the entry or in [defaults]")
    if isinstance(name, str) and (problem := project_name_problem(name)):
        raise UserInputError(f"{where}: project_name {problem}")
    try:
        return QueueEntry(number, TrainingConfig(**values))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(map(str, first["loc"])) or "settings"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"].endswith("_type"):
            message += f", got {json.dumps(first['input'], default=repr)}"
        raise UserInputError(f"{where}: {key}: {message}") from exc


def _absolute(value: Any, path: Path) -> Any:
    """`./x`, `../x` and `~/x` made absolute; URLs, Drive ids and absolute paths are left as written."""
    if isinstance(value, str) and (value.startswith(("./", "../", "~")) or value in (".", "..")):
        return str((path.parent / Path(value).expanduser()).resolve())
    return value


# --- the server ------------------------------------------------------------------------------------
def deployment_for(client, deployment: str, pool: str):
    """The deployment the queue submits to, created on `pool` from the installed flow when missing.

    Raises:
        UserInputError: the pool does not exist, or the deployment sends its runs to another pool.
    """
    from prefect.exceptions import ObjectNotFound  # noqa: PLC0415

    full_name = deployment if "/" in deployment else f"{FLOW_NAME}/{deployment}"
    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        raise UserInputError(f"work pool {pool!r} not found on the Prefect server; create it with "
                             f"`prefect work-pool create {pool} --type process` (see the README's work pools section), "
                             "or pass the pool's name") from None
    try:
        found = client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        found = None
    if found is not None:
        if found.work_pool_name != pool:
            raise UserInputError(f"deployment {full_name} sends its runs to work pool {found.work_pool_name!r}, not "
                                 f"{pool!r}; pass that pool, or another deployment name for this pool")
        return found
    if not full_name.startswith(f"{FLOW_NAME}/"):
        raise UserInputError(f"deployment {full_name} not found; deploy it with `prefect deploy --all`, or pass a "
                             f"deployment name alone and the queue creates {FLOW_NAME}/<name> on the pool")
    from prefect.deployments.runner import EntrypointType  # noqa: PLC0415

    from .train_lora import train_lora  # noqa: PLC0415

    # The installed package's module, as prefect.yaml deploys it: a worker imports it, pulls nothing.
    runner_deployment = train_lora.to_deployment(
        name=full_name.split("/", 1)[1], work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["anima", "lora"],
    )
    return client.read_deployment(runner_deployment.apply())


def pool_limit_hint(client, pool: str) -> str | None:
    """A warning when the pool has no concurrency limit: then only its workers' own `--limit` keeps two
    runs off one GPU."""
    if client.read_work_pool(pool).concurrency_limit is not None:
        return None
    return (f"warning: work pool {pool} has no concurrency limit, so its workers may start every queued run at once; "
            f"give it one run per GPU: prefect work-pool set-concurrency-limit {pool} N (N = its workers' GPUs)")


def entry_runs(client, deployment_id, entries: list[QueueEntry]) -> list[EntryRuns]:
    """Each entry's flow runs of the deployment, newest first (found by the project tag the queue gives them)."""
    from prefect.client.schemas.filters import (  # noqa: PLC0415
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort  # noqa: PLC0415

    found = []
    for entry in entries:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[PROJECT_TAG + entry.project])),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        )
        found.append(EntryRuns(entry, list(runs)))
    return found


def close_dead_entry_runs(client, entries: list[QueueEntry], log=print) -> list[str]:
    """Close the entries' runs whose process is known to be gone (a worker or machine that died mid-run
    leaves its run Running for ever), by the same rule as a run's own start (tasks/history.py). A dead run
    must not count as still training: it would never be submitted again, and it would keep its pool slot
    and its project's turn. Returns the closed runs' ids."""
    from ..tasks.history import close_dead_runs  # noqa: PLC0415 - Prefect, once the API URL is settled

    closed = []
    for entry in entries:
        closed += close_dead_runs(client, entry.project,
                                  log=lambda line, entry=entry: log(f"entry {entry.number} ({entry.project}): {line}"))
    return closed


def submit(client, deployment, status: list[EntryRuns], queue_name: str, log=print) -> list[EntryRuns]:
    """One run per entry that has neither finished nor a run queued or training; returns the entries submitted."""
    submitted = []
    for item in status:
        entry = item.entry
        if item.finished:
            log(f"entry {entry.number} ({entry.project}): finished earlier (flow run {item.runs[0].name}); not submitted")
            continue
        if item.active is not None:
            log(f"entry {entry.number} ({entry.project}): run {item.active.name} is {item.active.state_name.lower()}; "
                "not submitted again")
            continue
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"config": entry.config.model_dump(mode="json")},
            tags=[QUEUE_TAG, f"{QUEUE_TAG}:{queue_name}", PROJECT_TAG + entry.project],
        )
        item.runs.insert(0, run)
        submitted.append(item)
        resumes = " (resumes from its storage)" if item.runs[1:] else ""
        log(f"entry {entry.number} ({entry.project}): submitted as flow run {run.name}{resumes}")
    return submitted


def wait_for(client, status: list[EntryRuns], *, poll_s: float = 5.0, log=print) -> None:
    """Until every entry's newest run is final (Completed, Failed, Crashed, Cancelled)."""
    pending = {item.runs[0].id: item for item in status if item.runs and not _final(item.runs[0])}
    while pending:
        time.sleep(poll_s)
        for run_id, item in list(pending.items()):
            run = client.read_flow_run(run_id)
            item.runs[0] = run
            if _final(run):
                log(f"entry {item.entry.number} ({item.entry.project}): {run.state_name}")
                del pending[run_id]


def _final(run) -> bool:
    return run.state is not None and run.state.is_final()


# --- the comparison --------------------------------------------------------------------------------
def comparison_rows(client, status: list[EntryRuns]) -> list[dict[str, Any]]:
    """One row per entry: state, steps, time trained, final loss, best validation loss, LoRA path."""
    rows = []
    for item in status:
        entry, newest = item.entry, (item.runs[0] if item.runs else None)
        records, lora = _store_facts(entry.config)
        seconds = sum(run.total_run_time.total_seconds() for run in item.runs if run.total_run_time)
        losses = _table_artifact(client, artifact_key("loss", entry.project))
        rows.append({
            "entry": entry.number,
            "project": entry.project,
            "state": newest.state_name if newest is not None else "not submitted",
            "steps": _steps(records[-1] if records else {}),
            "time": _duration(seconds) if seconds else "-",
            "final loss": _rounded(_last_number(losses, "loss")),
            "best validation loss": _rounded(_best_validation(records)),
            "LoRA": lora or "-",
            "flow runs": len(item.runs),
        })
    return rows


def publish_comparison(rows: list[dict[str, Any]], queue_name: str) -> str:
    """The table artifact comparing the queue's entries; returns its key."""
    from prefect.artifacts import create_table_artifact  # noqa: PLC0415

    key = artifact_key("queue", queue_name)
    create_table_artifact(table=rows, key=key, description=f"Anima LoRA queue {queue_name}: one row per entry")
    return key


def _store_facts(config: TrainingConfig) -> tuple[list[dict], str | None]:
    """The project's runs.jsonl records and its final LoRA's path, when this machine can read the storage."""
    from ..storage import RunStore, resolve_location  # noqa: PLC0415

    try:
        store = RunStore(resolve_location(config.storage), config.project_name)
        runs = store.runs()
        final = store.checkpoint_name()
        lora = store.path("checkpoints", final) if final in store.list_checkpoints() else None
    except (OSError, ValueError, ImportError):  # a bucket this machine has no credentials for: the row says "-"
        return [], None
    return runs, lora


def _best_validation(records: list[dict]) -> float | None:
    """The lowest held-out loss any session of the project measured (runs.jsonl `validation`: [step, loss] pairs)."""
    values = [float(pair[1]) for record in records for pair in (record.get("validation") or [])
              if isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[1], (int, float))
              and math.isfinite(pair[1])]
    return min(values) if values else None


def _steps(record: dict) -> str:
    done, total = record.get("steps_done"), record.get("total_steps")
    if done is None:
        return "-"
    return f"{done}/{total}" if total else str(done)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table_artifact(client, key: str) -> list[dict]:
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey  # noqa: PLC0415

    found = client.read_latest_artifacts(
        artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key])), limit=1)
    if not found or found[0].type != "table":
        return []
    data = found[0].data
    try:
        rows = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return []
    return rows if isinstance(rows, list) else []


def _last_number(rows: list[dict], column: str) -> float | None:
    values = [row[column] for row in rows if isinstance(row, dict) and isinstance(row.get(column), (int, float))
              and not isinstance(row.get(column), bool) and math.isfinite(row[column])]
    return float(values[-1]) if values else None


def _rounded(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


# --- the command -----------------------------------------------------------------------------------
def run_queue(args) -> int:
    """`anima-lora queue`: validate every entry, submit the unfinished ones, optionally wait and compare."""
    from ..ui.notify import connect_to_lasting_api  # noqa: PLC0415

    path = Path(args.file)
    entries = read_queue_file(path)  # before any server is asked anything: a bad entry submits nothing
    connect_to_lasting_api("a queue needs")
    from prefect.client.orchestration import get_client  # noqa: PLC0415 - after the API URL is settled

    queue_name = path.stem
    with get_client(sync_client=True) as client:
        deployment = deployment_for(client, args.deployment, args.pool)
        if hint := pool_limit_hint(client, args.pool):
            print(hint, file=sys.stderr)
        close_dead_entry_runs(client, entries)
        status = entry_runs(client, deployment.id, entries)
        submitted = submit(client, deployment, status, queue_name)
        print(f"{len(submitted)} of {len(entries)} entries submitted to work pool {args.pool} "
              f"(deployment {FLOW_NAME}/{deployment.name})")
        if not args.wait:
            print("run the same command with --wait to wait for them and publish the comparison table; "
                  "running it again submits only entries that have not finished")
            return 0
        try:
            wait_for(client, status, poll_s=args.poll_seconds)
        except KeyboardInterrupt:
            # Only the waiting stops: the runs belong to the pool's workers and go on.
            print("stopped waiting; the submitted runs go on in the pool. Run the same command with --wait again "
                  "to wait for them and publish the comparison (nothing finished is submitted twice)")
            return EXIT_INTERRUPTED
        rows = comparison_rows(client, status)
        key = publish_comparison(rows, queue_name)
    for row in rows:
        print(f"  {row['entry']}. {row['project']}: {row['state']}, steps {row['steps']}, {row['time']}, "
              f"final loss {row['final loss']}, best validation loss {row['best validation loss']}, LoRA {row['LoRA']}")
    print(f"comparison published as the table artifact {key}")
    return 0 if all(row["state"] == "Completed" for row in rows) else 1
