"""The end-of-run summary: what was trained, where the LoRA is, and what to do next."""

from __future__ import annotations

from ..config import TrainingConfig
from ..core.formatting import format_duration
from ..trainer.registry import backend_for


def format_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _known(value) -> str:
    return "-" if value is None else str(value)


def speed_text(result: dict) -> str:
    """The session's average seconds per step, and which steps it covers."""
    sec = result.get("sec_per_step")
    if not sec:
        return ""
    timed, warmup = result.get("timed_steps"), result.get("warmup_steps")
    if timed and warmup:
        return f"{sec:.2f} s/step (average of {timed} steps after {warmup} warm-up steps)"
    return f"{sec:.2f} s/step (average of {timed} steps, warm-up included)" if timed else f"{sec:.2f} s/step"


def summary_markdown(config: TrainingConfig, result: dict, store_root: str) -> str:
    outcome = result.get("outcome", "?")
    lines = [
        f"# {config.project_name}: {outcome}",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {_known(result.get('steps_done'))} of {_known(result.get('total_steps'))} "
        f"(started at {result.get('start_step', 0)}) |",
        f"| last loss | {result.get('last_loss') if result.get('last_loss') is not None else '-'} |",
        f"| speed | {speed_text(result) or '-'} |",
        f"| storage | `{store_root}` |",
        f"| final LoRA | `{result.get('final_lora') or '-'}` |",
    ]
    if result.get("already_complete"):
        lines += ["", "Training was already complete: nothing was trained and the final LoRA was left as it was."]
    if outcome == "stopped":
        lines += ["", f"Stopped to save the session ({result.get('stop_reason')}). "
                      "Run the same cell or command again in a new session to continue from the saved state."]
    if result.get("unsynced_steps"):
        lines += ["", f"**{result['unsynced_steps']} steps are not yet in storage**; keep this session alive until sync finishes."]
    return "\n".join(lines)


def summary_text(config: TrainingConfig, result: dict) -> str:
    outcome = result.get("outcome")
    if outcome == "dry-run":
        return _dry_run_text(config, result)
    if result.get("already_complete"):
        outcome = "already complete, nothing trained"
    head = f"{config.project_name}: {outcome}, {_known(result.get('steps_done'))}/{_known(result.get('total_steps'))} steps"
    if result.get("sec_per_step"):
        head += f" at {speed_text(result)}"
    lines = [head]
    if result.get("final_lora"):
        size = f" ({format_bytes(result['lora_bytes'])})" if result.get("lora_bytes") else ""
        lines.append(f"LoRA: {result['final_lora']}{size}")
    if outcome == "stopped":
        lines.append("Stopped before the session ends; run the same command again to continue.")
    if result.get("elapsed_s"):
        lines.append(f"time: {format_duration(result['elapsed_s'])}")
    return "\n".join(lines)


def _dry_run_text(config: TrainingConfig, result: dict) -> str:
    plan = result.get("plan") or {}
    steps = (plan.get("steps") or {}).get("total_steps")
    lines = [f"{config.project_name}: dry run, {result.get('trainable_images')} images, {steps} steps; nothing trained"]
    key = backend_for(config.trainer).preview_key
    own = result.get(key) if key else None  # the backend's own files and command (runner/prepare.backend_files)
    if own:
        files = {_file_label(name): path for name, path in own.items() if name not in ("command", "models_note")}
        width = max(map(len, files), default=0) + 1
        lines += [f"{(label + ':').ljust(width)} {path}" for label, path in files.items()]
        lines += ["command:", own["command"]]
    return "\n".join(lines)


def _file_label(name: str) -> str:
    """training_toml -> training TOML."""
    stem, _, kind = name.rpartition("_")
    return f"{stem.replace('_', ' ')} {kind.upper()}" if stem else name
