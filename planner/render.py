"""The plan as a short terminal table and as a Prefect markdown artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Plan


def rows(plan: "Plan") -> list[tuple[str, str]]:
    """(label, value) pairs shared by the text and markdown views."""
    s = plan.steps
    gpus = f" on {plan.num_gpus} GPUs, data parallel" if plan.num_gpus > 1 else ""
    steps = f"{s.total_steps:,} ({s.steps_per_epoch:,}/epoch x {s.epochs} epochs; {s.batches_per_epoch:,} batches from {s.samples_per_epoch:,} samples{gpus})"
    if plan.steps_done:
        steps += f", {plan.steps_done:,} done"
    speed = "measured at run time" if plan.sec_per_step is None else f"{plan.sec_per_step:.3g} s/step ({plan.rate_status})"
    time = "unknown until training starts" if plan.train_hours is None else f"{plan.train_hours:.1f} h training + {plan.setup_hours:g} h setup per session"
    if plan.extra_hours:
        time += f" + {plan.extra_hours:.1f} h validation and sampling"
    return [
        ("Platform", plan.platform),
        ("Steps", steps),
        ("Speed", f"{speed}, {'fp32' if plan.precision == 'no' else plan.precision}, {_fast_path(plan)}"),
        ("Time", time),
        ("Session", _session(plan)),
        ("Memory", _memory(plan)),
        *([("Extras", plan.extras.describe())] if plan.extras else []),
        ("Storage", _storage(plan)),
        ("Decision", plan.decision + (f": {plan.reason}" if plan.reason else "")),
    ]


def to_text(plan: "Plan") -> str:
    lines = [f"Plan for {plan.project}"]
    lines += [f"  {label:<9} {value}" for label, value in rows(plan)]
    if plan.choices:
        lines.append("Why these settings:")
        lines += [f"  - {c}" for c in plan.choices]
    if plan.suggestions:
        lines.append("Suggestions (each fits this session):")
        lines += [f"  - {s.text}" for s in plan.suggestions]
    if plan.warnings:
        lines.append("Warnings:")
        lines += [f"  - {w}" for w in plan.warnings]
    lines.append(f"Speed source: {plan.rate_source}")
    return "\n".join(lines)


def to_markdown(plan: "Plan") -> str:
    md = [f"# Plan: {plan.project}\n", "| item | value |", "|---|---|"]
    md += [f"| {label} | {value.replace('|', '/')} |" for label, value in rows(plan)]
    md.append(f"\nSpeed source: {plan.rate_source}. Memory: {plan.memory.status}, {plan.memory.source}.")
    if plan.choices:
        md += ["\n## Why these settings\n"] + [f"- {c}" for c in plan.choices]
    if plan.suggestions:
        md += ["\n## Suggestions\n", "| setting | value | steps | hours |", "|---|---|---|---|"]
        md += [f"| {s.setting} | {s.value} | {s.total_steps} | {s.hours} |" for s in plan.suggestions]
    if plan.warnings:
        md += ["\n## Warnings\n"] + [f"- {w}" for w in plan.warnings]
    return "\n".join(md) + "\n"


def _fast_path(plan: "Plan") -> str:
    compiled = "eager" if plan.compile_mode == "none" else f"compile {plan.compile_mode}"
    return f"{compiled}, checkpointing {'on' if plan.gradient_checkpointing else 'off'}, batch {plan.batch_size}"


def _session(plan: "Plan") -> str:
    if plan.session_hours_left is None:
        return "no session limit"
    head = f"{_hours(plan.session_hours_left)} left of {_hours(plan.session_limit_hours)}"
    if plan.fits is None:
        return head
    if plan.fits:
        return f"{head}; fits in this session"
    if not plan.sessions_needed:
        return f"{head}; too short for setup and a checkpoint"
    return f"{head}; needs {plan.sessions_needed} sessions"


def _storage(plan: "Plan") -> str:
    if plan.storage_durable:
        return "durable (survives the session)"
    if plan.gpu_source == "named" and plan.platform_kind not in ("colab", "kaggle"):
        # Planned here for a Colab/Kaggle GPU: judged by their disk rules, since that is where it would run.
        return "this machine's disk: kept here, but lost with a Colab/Kaggle session"
    return "lost with this session"


def _hours(hours: float) -> str:
    """Short sessions in minutes: "0.0 h" of a 0.01 h budget says nothing."""
    return f"{hours * 60:.0f} min" if hours < 0.1 else f"{hours:.1f} h"


def _memory(plan: "Plan") -> str:
    m = plan.memory
    if m.available_gib is None:
        # Without a GPU only a small local model (the demo's) gets this far: the figure is the real model's.
        return f"no GPU here; the Anima model would need {m.predicted_gib:.1f} GiB of GPU memory at these settings ({m.status})"
    verdict = "fits" if m.fits else "does NOT fit"
    return f"{m.predicted_gib:.1f} GiB predicted ({m.status}) of {m.available_gib:.1f} GiB: {verdict}"
