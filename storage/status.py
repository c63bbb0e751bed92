"""`anima-lora status`: what a project holds in storage (states, checkpoints, runs)."""

from __future__ import annotations

import json
import time

from .runstore import RunStore


def project_status(store: RunStore) -> dict:
    states = []
    for state, reason in store.iter_valid_states():
        states.append({"step": state.step, "epoch": state.epoch, "valid": reason is None, "problem": reason,
                       "fingerprint": state.fingerprint})
    return {
        "project": store.project,
        "root": store.root,
        "latest": store.latest_pointer(),
        "states": states,
        "checkpoints": store.list_checkpoints(),
        "runs": store.runs(),
    }


def status_text(store: RunStore, *, as_json: bool = False) -> str:
    info = project_status(store)
    if as_json:
        return json.dumps(info, indent=2, default=str)
    lines = [f"project {info['project']} at {info['root']}"]
    lines.append(f"states ({len(info['states'])}, newest first):" if info["states"] else "states: none saved yet")
    for s in info["states"]:
        mark = "ok" if s["valid"] else f"UNUSABLE: {s['problem']}"
        lines.append(f"  step {s['step']:>7} epoch {s['epoch']}  {mark}")
    lines.append("checkpoints: " + (", ".join(info["checkpoints"]) or "none"))
    lines.append(f"runs ({len(info['runs'])}):" if info["runs"] else "runs: none recorded")
    for run in info["runs"][-10:]:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.get("started", 0)))
        lines.append(f"  {started}  {run.get('outcome')}  steps {run.get('steps_done')}/{run.get('total_steps')}  {run.get('run_id')}")
    return "\n".join(lines)
