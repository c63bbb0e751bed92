"""The end-of-run summary: what was trained, where the LoRA is, and what to do next."""

from __future__ import annotations

import re

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


def loss_text(loss: float | None) -> str:
    """A loss to 4 significant digits: the digits that differ between steps, not the float's noise."""
    return "-" if loss is None else f"{loss:.4g}"


def seconds_text(sec: float) -> str:
    """Seconds per step to 3 significant digits, trailing zeros kept (0.0512, 1.29, 3.00, 12.5, 250)."""
    return f"{sec:.0f}" if sec >= 100 else f"{sec:#.3g}"


def speed_text(result: dict) -> str:
    """The session's average seconds per step, and which steps it covers."""
    sec = result.get("sec_per_step")
    if not sec:
        return ""
    speed = f"{seconds_text(sec)} s/step"
    timed, warmup = result.get("timed_steps"), result.get("warmup_steps")
    if timed and warmup:
        return f"{speed} (average of {timed} steps after {warmup} warm-up steps)"
    return f"{speed} (average of {timed} steps, warm-up included)" if timed else speed


def resume_advice(result: dict) -> str:
    """What a stopped session saved and how to go on: the log line, the summary and the flow's state message."""
    return (
        f"saved a resumable state at step {_known(result.get('steps_done'))} and stopped "
        f"({result.get('stop_reason') or 'deadline'}); run the same command or cell again in a new session to continue"
    )


_MARKDOWN_SYNTAX = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~])")


def quoted(text: str) -> str:
    """`text` as a markdown block quote that wraps in the UI and shows every character as written: a
    trainer's message holds paths with `_` and `*`, and `|` or `#` that markdown would take as syntax."""
    escaped = _MARKDOWN_SYNTAX.sub(r"\\\1", text)
    return "\n".join(f"> {line}" if line else ">" for line in escaped.splitlines())


def summary_markdown(config: TrainingConfig, result: dict, store_root: str) -> str:
    """The summary artifact. A failed run's `result` carries `reason`, the error that ended it."""
    outcome = result.get("outcome", "?")
    elapsed = result.get("elapsed_s")
    lines = [
        f"# {config.project_name}: {outcome}",
        "",
        "| | |",
        "|---|---|",
        f"| steps | {_known(result.get('steps_done'))} of {_known(result.get('total_steps'))} "
        f"(started at {result.get('start_step', 0)}) |",
        f"| last loss | {loss_text(result.get('last_loss'))} |",
        f"| speed | {speed_text(result) or '-'} |",
        f"| time | {'-' if elapsed is None else format_duration(elapsed)} |",
        f"| storage | `{store_root}` |",
        f"| final LoRA | `{result.get('final_lora') or '-'}` |",
    ]
    if result.get("already_complete"):
        lines += ["", "Training was already complete: nothing was trained and the final LoRA was left as it was."]
    if outcome == "stopped":
        advice = resume_advice(result)
        lines += ["", advice[0].upper() + advice[1:] + "."]
    if result.get("reason"):
        lines += ["", f"The run failed at step {_known(result.get('steps_done'))}:", "", quoted(str(result["reason"]))]
    if result.get("unsynced_steps") and outcome == "failed":
        # The session is over: nothing is still uploading, what is missing will be trained again.
        lines += ["", f"**The newest state in storage is {result['unsynced_steps']} steps behind**: running again "
                      "resumes from it and trains those steps again."]
    elif result.get("unsynced_steps"):
        lines += ["", f"**{result['unsynced_steps']} steps are not yet in storage**; keep this session alive until sync finishes."]
    lines += [f"\n{line}" for line in sampling_lines(result)]
    lines += [f"\n{line}" for line in validation_lines(result)]
    return "\n".join(lines)


def sampling_lines(result: dict) -> list[str]:
    """Where this session's sample grids are, and each sampling point that failed with its reason."""
    lines = []
    if result.get("samples"):
        grids = result["samples"]
        lines.append(f"sample grids: {len(grids)}, the newest {grids[-1]}")
    for step, why in result.get("sampling_errors") or []:
        lines.append(f"sampling failed at step {step} (training went on): {why}")
    return lines


def validation_lines(result: dict) -> list[str]:
    """The newest validation loss, and which LoRA file to use: the epoch with the lowest validation loss."""
    lines = []
    if result.get("validation"):
        step, loss = result["validation"][-1]
        lines.append(f"validation loss: {loss_text(loss)} at step {step}")
    best = result.get("best_epoch")
    if best:
        lines.append(f"use {best['file']}: lowest validation loss {best['loss']:.4f} at epoch {best['epoch']} ({best['set']})")
    return lines


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
    lines += sampling_lines(result)
    lines += validation_lines(result)
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
