"""`anima-lora status`: what a project holds in storage (states, checkpoints, runs)."""

from __future__ import annotations

import json
import time

from ..ui.progress import epoch_position
from .runstore import RunStore


def project_status(store: RunStore) -> dict:
    states = []
    for state, reason in store.iter_valid_states():
        manifest = state.manifest
        epochs = manifest.get("epochs") or (manifest.get("config") or {}).get("max_train_epochs")
        states.append({"step": state.step, "epoch": state.epoch, "valid": reason is None, "problem": reason,
                       "fingerprint": state.fingerprint, "total_steps": state.total_steps,
                       "position": epoch_position(state.epoch, manifest.get("step_in_epoch"), epochs)})
    return {
        "project": store.project,
        "root": store.root,
        "latest": store.latest_pointer(),
        "states": states,
        "checkpoints": store.list_checkpoints(),
        "runs": store.runs(),
    }


def _known(value) -> str:
    return "-" if value is None else str(value)


def status_text(store: RunStore, *, as_json: bool = False) -> str:
    info = project_status(store)
    if as_json:
        return json.dumps(info, indent=2, default=str)
    lines = [f"project {info['project']} at {info['root']}"]
    lines.append(f"states ({len(info['states'])}, newest first):" if info["states"] else "states: none saved yet")
    for s in info["states"]:
        mark = "ok" if s["valid"] else f"UNUSABLE: {s['problem']}"
        of = f" of {s['total_steps']}" if s["total_steps"] else ""
        lines.append(f"  step {s['step']:>7}{of}  {s['position'] or '-'}  {mark}")
    lines.append("checkpoints: " + (", ".join(info["checkpoints"]) or "none"))
    lines.append(f"runs ({len(info['runs'])}):" if info["runs"] else "runs: none recorded")
    for run in info["runs"][-10:]:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.get("started", 0)))
        steps = f"{_known(run.get('steps_done'))}/{_known(run.get('total_steps'))}"
        lines.append(f"  {started}  {run.get('outcome')}  steps {steps}  {run.get('run_id')}")
        if run.get("error"):
            lines.append(f"      reason: {run['error']}")
    if not (info["states"] or info["checkpoints"] or info["runs"]):
        lines.append("nothing here yet: no run of this project has started training in this storage "
                     "(a run refused before training, or a dry run, leaves nothing)")
    return "\n".join(lines)
