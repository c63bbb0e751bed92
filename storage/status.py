"""`anima-lora status`: what a project holds in storage (the run training now, states, checkpoints, runs).

runs.jsonl is written when a run ends, so it cannot tell on its own about the run that trains now or
one that was SIGKILLed: those are found from the project lock and from configs/<run-id>/, which a
session writes when it starts. A run whose record lacks its steps (Ctrl-C, kill) gets them from the
newest state it published.
"""

from __future__ import annotations

import json
import math
import time

from ..core.formatting import epoch_position
from ..errors import render, setting
from .location import Location
from .lock import STALE_S, _why_free, read_lock
from .runstore import PART_MARK, RunStore

TRAINING_NOW = "training now"
KILLED = "ended without a record (killed?)"


def run_id_started(run_id: str) -> float | None:
    """The start time encoded in a run id (runner.train.new_run_id: YYYYmmdd-HHMMSS-pid), local time."""
    try:
        return time.mktime(time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    except (ValueError, OverflowError):
        return None


def lock_status(store: RunStore, now: float) -> dict | None:
    """The lock holder, how long ago it beat, and why its lock no longer holds (None while it may be alive)."""
    holder = read_lock(store)
    if holder is None:
        return None
    age = now - float(holder.get("heartbeat") or 0)
    return {**holder, "heartbeat_age_s": round(age, 1), "stale": _why_free(holder, now, STALE_S)}


def project_status(store: RunStore, *, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    states = []
    for state, reason in store.iter_valid_states():
        manifest = state.manifest
        epochs = manifest.get("epochs") or (manifest.get("config") or {}).get("max_train_epochs")
        states.append({"step": state.step, "epoch": state.epoch, "valid": reason is None, "problem": reason,
                       "fingerprint": state.fingerprint, "total_steps": state.total_steps,
                       "published_at": manifest.get("published_at"),
                       "position": epoch_position(state.epoch, manifest.get("step_in_epoch"), epochs)})
    lock = lock_status(store, now)
    return {
        "project": store.project,
        "root": store.root,
        "lock": lock,
        "latest": store.latest_pointer(),
        "states": states,
        "checkpoints": store.list_checkpoints(),
        "best_epoch": store.best_epoch(),
        "runs": _all_runs(store, lock, states),
    }


def _all_runs(store: RunStore, lock: dict | None, states: list[dict]) -> list[dict]:
    """runs.jsonl's records plus the runs it lacks (the lock holder, configs/<run-id>/ without a line), by start."""
    runs = [dict(run) for run in store.runs()]
    recorded = {run.get("run_id") for run in runs}
    # config.json is the session's (a dry run of sd-scripts leaves its TOMLs there too, and is no run).
    unrecorded = {name for name in store.listdir("configs")
                  if name not in recorded and store.exists(f"configs/{name}/config.json")}
    if lock and lock.get("run_id") and lock["run_id"] not in recorded:
        unrecorded.add(lock["run_id"])
    for run_id in unrecorded:
        live = lock is not None and lock.get("run_id") == run_id and not lock["stale"]
        started = (lock.get("started") if lock and lock.get("run_id") == run_id else None) or run_id_started(run_id)
        runs.append({"run_id": run_id, "started": started, "outcome": TRAINING_NOW if live else KILLED,
                     "steps_done": None, "total_steps": None, "recorded": False})
    runs.sort(key=lambda run: run.get("started") or 0)
    for i, run in enumerate(runs):
        if run.get("steps_done") is None:
            # A run's states are those published between its start and its end (or the next run's start).
            end = run.get("ended") or (runs[i + 1].get("started") if i + 1 < len(runs) else None) or math.inf
            _steps_from_states(run, states, float(run.get("started") or 0), float(end))
    return runs


def _steps_from_states(run: dict, states: list[dict], start: float, end: float) -> None:
    mine = [s for s in states if s["valid"] and s["published_at"] and start <= s["published_at"] <= end]
    if mine:
        newest = max(mine, key=lambda s: s["step"])
        run.update(steps_done=newest["step"], total_steps=run.get("total_steps") or newest["total_steps"],
                   steps_from="state")


def _known(value) -> str:
    return "-" if value is None else str(value)


def _lock_line(lock: dict) -> str:
    who = f"run {lock.get('run_id')} on host {lock.get('host')}, pid {lock.get('pid')}"
    age = f"{lock['heartbeat_age_s']:.0f} s ago"
    if lock["stale"] is None:
        return f"training now: {who}, heartbeat {age}"
    return f"stale lock: {who}, last heartbeat {age} ({lock['stale']}); the next run takes the project over"


def status_text(store: RunStore, *, as_json: bool = False, now: float | None = None) -> str:
    info = project_status(store, now=now)
    if as_json:
        return json.dumps(info, indent=2, default=str)
    lines = [f"project {info['project']} at {info['root']}"]
    if info["lock"]:
        lines.append(_lock_line(info["lock"]))
    lines.append(f"states ({len(info['states'])}, newest first):" if info["states"] else "states: none saved yet")
    for s in info["states"]:
        mark = "ok" if s["valid"] else f"UNUSABLE: {s['problem']}"
        of = f" of {s['total_steps']}" if s["total_steps"] else ""
        lines.append(f"  step {s['step']:>7}{of}  {s['position'] or '-'}  {mark}")
    lines.append("checkpoints: " + (", ".join(info["checkpoints"]) or "none"))
    best = info["best_epoch"]
    if best:
        epoch = f"epoch {best['epoch']}" if best["epoch"] is not None else "the final LoRA"
        lines.append(f"best: {best['file']} ({epoch}), lowest validation loss {best['loss']:.4f}"
                     + (f" ({best['set']})" if best["set"] else ""))
    lines.append(f"runs ({len(info['runs'])}):" if info["runs"] else "runs: none recorded")
    for run in info["runs"][-10:]:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.get("started") or 0))
        steps = f"{_known(run.get('steps_done'))}/{_known(run.get('total_steps'))}"
        if run.get("steps_from") == "state":
            steps += " (newest state)"
        lines.append(f"  {started}  {run.get('outcome')}  steps {steps}  {run.get('run_id')}")
        if run.get("error"):
            lines.append(f"      reason: {run['error']}")
    if not (info["lock"] or info["states"] or info["checkpoints"] or info["runs"]):
        lines.append("nothing here yet: no run of this project has started training in this storage "
                     "(a run refused before training, or a dry run, leaves nothing)")
    return "\n".join(lines)


def list_projects(location: Location) -> list[dict]:
    """Each project folder in the storage root, by name, with its newest published state's step (None: none yet)."""
    location.fs.invalidate_cache(location.root)
    if not location.fs.isdir(location.root):
        return []
    projects = []
    for entry in location.fs.ls(location.root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or name.startswith(".") or PART_MARK in name:
            continue
        states = RunStore(location, name).list_states()
        newest = states[-1] if states else None
        projects.append({"project": name, "newest_step": newest.step if newest else None,
                         "total_steps": newest.total_steps if newest else None})
    return sorted(projects, key=lambda p: p["project"])


def projects_text(projects: list[dict], shown_root: str, *, as_json: bool = False) -> str:
    """`anima-lora status` without a project: the projects in `shown_root` (as the user wrote it), or where none were found."""
    if as_json:
        return json.dumps({"root": shown_root, "projects": projects}, indent=2)
    if not projects:
        return render(f"no projects in {shown_root}: nothing has trained with this {setting('storage')} yet")
    lines = [f"projects in {shown_root} ({len(projects)}):"]
    width = max(len(p["project"]) for p in projects)
    for p in projects:
        if p["newest_step"] is None:
            newest = "no state saved yet"
        else:
            newest = f"newest state: step {p['newest_step']}" + (f" of {p['total_steps']}" if p["total_steps"] else "")
        lines.append(f"  {p['project']:<{width}}  {newest}")
    lines.append(f"details: anima-lora status PROJECT --storage {shown_root}")
    return "\n".join(lines)
