"""The training plan: steps, time, sessions and memory for this GPU, and what to do when it does not fit."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field

from ..config import TrainingConfig
from ..core.gpu import GpuInfo
from ..core.step_model import cuda_graphs_need_cuda
from ..effective import Effective, Machine, derive
from ..errors import UserInputError, setting
from ..errors import render as spoken
from ..platforms.detect import COLAB_FREE_LIMIT_S, HOUR, PlatformInfo
from ..platforms.durable import is_durable_storage
from ..trainer.registry import backend_for
from . import render
from .extras import ExtraWork
from .extras import estimate as estimate_extras
from .gpus import find_spec, is_notebook_gpu, named_gpu
from .guard import DEFAULT_MARGIN_S, DEFAULT_SAVE_COST_S
from .memory import USABLE_SHARE, MemoryEstimate, check_memory
from .rates import Rate, lookup_rate
from .steps import StepCount, count_steps, with_repeats
from .suggest import largest_epochs, largest_repeats, max_steps_within

Decision = Literal["ok", "stop", "resume", "proceed"]
# Per-session setup before the first step: install, ~5.6 GB of models, latent and text caching (estimated).
SETUP_S = 600.0
# Kept back at the end of every session: the guard's save and margin.
RESERVE_S = DEFAULT_SAVE_COST_S + DEFAULT_MARGIN_S


class Suggestion(BaseModel):
    """A setting change that makes the run fit this session, with what it would cost."""

    setting: str
    value: int | float | str
    total_steps: int | None = None
    hours: float | None = None
    text: str


class Plan(BaseModel):
    """What the run will do and whether it fits; stored as plan.json and shown as a markdown artifact."""

    project: str
    platform: str
    platform_kind: str
    gpu: str | None
    gpu_source: Literal["detected", "named", "none"]
    num_gpus: int = 1  # data-parallel processes; steps are already counted with it
    precision: str
    steps: StepCount
    steps_done: int = 0
    sec_per_step: float | None
    rate_status: str
    rate_source: str
    setup_hours: float
    train_hours: float | None  # the training steps alone
    extra_hours: float | None = None  # validation and sampling over the steps left (extras)
    total_hours: float | None
    session_limit_hours: float | None
    session_hours_left: float | None
    deadline_ts: float | None
    sessions_needed: int | None
    fits: bool | None
    decision: Decision
    overrun_action: Literal["stop", "resume", "proceed"]
    reason: str = ""
    storage_durable: bool
    suggestions: list[Suggestion] = Field(default_factory=list)
    memory: MemoryEstimate
    extras: ExtraWork | None = None  # validation and sampling: time, share of training, the VAE decoder's memory
    # The fast path as the trainer will run it (effective.py), and why: one line per choice.
    gradient_checkpointing: bool = True
    compile_mode: str = "none"
    batch_size: int = 1
    choices: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)

    def to_text(self) -> str:
        return render.to_text(self)

    def to_markdown(self) -> str:
        return render.to_markdown(self)


def make_plan(
    config: TrainingConfig,
    samples_per_bucket: Mapping,
    platform: PlatformInfo,
    *,
    gpu: str | None = None,
    now: float | None = None,
    steps_done: int = 0,
    cwd: str | None = None,
) -> Plan:
    """Plan the run for the detected GPU (or `gpu`, a table name such as "T4").

    Raises:
        UserInputError: `gpu` names no known GPU, or the dataset has no samples.
    """
    now = time.time() if now is None else now
    if gpu:
        platform = _session_for_named_gpu(platform, named_gpu(gpu), config.session_budget_hours, now)
    elif config.session_budget_hours is not None and platform.session_limit_s != config.session_budget_hours * HOUR:
        platform = platform.with_session_budget(config.session_budget_hours)
    gpu_info = platform.gpu
    try:
        eff = derive(config, samples_per_bucket, Machine.from_gpu(gpu_info, config.num_gpus), backend_for(config.trainer).numbers)
    except ValueError as exc:
        raise UserInputError(str(exc)) from exc
    precision, steps = eff.precision, eff.steps
    rate = _rate(config, eff, gpu_info, precision, config.resolution)
    left = platform.remaining_s(now)
    peak = find_spec(gpu_info.name).peak_tflops if gpu_info and find_spec(gpu_info.name) else None
    extras = estimate_extras(config, eff, rate.sec_per_step, peak, _memory_precision(eff, config))
    timing = _timing(steps.total_steps - steps_done, rate.sec_per_step, left, platform.session_limit_s, SETUP_S,
                     _extra_left(extras, steps.total_steps, steps_done), extras.last_sampling_s)
    if (timing["sessions_needed"] or 1) > 1 and config.sample_every_n_epochs:
        # Each stop but the last samples once more: price those grids too.
        extras = estimate_extras(config, eff, rate.sec_per_step, peak, _memory_precision(eff, config), timing["sessions_needed"])
        timing = _timing(steps.total_steps - steps_done, rate.sec_per_step, left, platform.session_limit_s, SETUP_S,
                         _extra_left(extras, steps.total_steps, steps_done), extras.last_sampling_s)
    durable = is_durable_storage(config.storage, _storage_platform(platform, gpu), cwd)
    action = _overrun_action(config.on_overrun, durable)
    plan = Plan(
        project=config.project_name,
        platform=platform.describe() if not gpu else f"{platform.kind}, planned for {gpu_info.name}",
        platform_kind=platform.kind,
        gpu=gpu_info.name if gpu_info else None,
        gpu_source="named" if gpu else ("detected" if gpu_info else "none"),
        num_gpus=config.num_gpus,
        precision=precision,
        steps=steps,
        steps_done=steps_done,
        sec_per_step=rate.sec_per_step,
        rate_status=rate.status,
        rate_source=rate.source,
        setup_hours=round(SETUP_S / HOUR, 2),
        session_limit_hours=None if platform.session_limit_s is None else round(platform.session_limit_s / HOUR, 2),
        deadline_ts=platform.deadline_ts,
        overrun_action=action,
        decision="ok",
        storage_durable=durable,
        memory=_memory(eff, config, gpu_info),
        extras=extras,
        gradient_checkpointing=eff.gradient_checkpointing,
        compile_mode=eff.compile_mode,
        batch_size=eff.batch_size,
        choices=list(eff.fast_path_reasons),
        warnings=list(platform.notes),
        **timing,
    )
    plan.decision, plan.reason = _decide(plan, config, gpu_info)
    if plan.fits is False:
        plan.suggestions = _suggestions(config, eff, samples_per_bucket, plan, gpu_info, left)
    plan.warnings += _warnings(config, plan, gpu_info, platform)
    if plan.fits is False and with_repeats(samples_per_bucket, config.repeats, 1) is None:
        plan.warnings.append(spoken(f"per-folder (kohya) repeats: {setting('repeats')} does not change them; lower the N_ folder prefixes instead"))
    return plan


def enforce_plan(plan: Plan) -> None:
    """Stop before any download when the plan says so.

    Raises:
        UserInputError: decision is "stop"; the message has the reason and the suggestions (field
            "on_overrun" when the run does not fit this session).
    """
    if plan.decision != "stop":
        return
    lines = [plan.reason] + [f"  try: {s.text}" for s in plan.suggestions]
    raise UserInputError("\n".join(lines), field="on_overrun" if plan.fits is False else None)


def _session_for_named_gpu(platform: PlatformInfo, gpu: GpuInfo, budget_h: float | None, now: float) -> PlatformInfo:
    """A plan for another GPU is a plan for a fresh session: this one's age does not apply to it."""
    limit = platform.session_limit_s
    if budget_h is not None:
        limit = budget_h * HOUR
    elif limit is None and is_notebook_gpu(gpu.name):
        limit = COLAB_FREE_LIMIT_S
    note = f"planned for a fresh session on {gpu.name}" + (f" of {limit / HOUR:g} h" if limit else " without a time limit")
    if limit and platform.kind not in ("colab", "kaggle"):
        note += " (Colab/Kaggle)"
    update = {"gpu": gpu, "session_limit_s": limit, "session_age_s": 0.0, "detected_at": now, "notes": [*platform.notes, note]}
    return platform.model_copy(update=update)


def _storage_platform(platform: PlatformInfo, gpu: str | None) -> PlatformInfo:
    """Judge storage where the run will be: a plan for a Colab/Kaggle GPU made elsewhere uses their disk rules."""
    if not gpu or platform.ephemeral_disk or not is_notebook_gpu(gpu):
        return platform
    return platform.model_copy(update={"kind": "colab"})


def refresh_timing(plan: Plan, sec_per_step: float | None, steps_done: int, now: float | None = None) -> dict:
    """Timing fields for `plan` from `steps_done` on; this session's setup is already behind it.

    Validation and sampling keep their planned share of the training time (they scale with the same rate).
    """
    now = time.time() if now is None else now
    left = None if plan.deadline_ts is None else plan.deadline_ts - now
    limit = None if plan.session_limit_hours is None else plan.session_limit_hours * HOUR
    steps_left = plan.steps.total_steps - steps_done
    share = plan.extras.share_of_training if plan.extras and plan.extras.share_of_training else 0.0
    extra = None if sec_per_step is None else max(0, steps_left) * sec_per_step * share
    final = plan.extras.last_sampling_s if plan.extras else 0.0
    return _timing(steps_left, sec_per_step, left, limit, 0.0, extra or 0.0, final)


def _extra_left(extras: ExtraWork, total_steps: int, steps_done: int) -> float:
    """Validation and sampling time still ahead: their run total, by the share of steps left."""
    if extras.total_s is None or total_steps <= 0:
        return 0.0
    return extras.total_s * max(0, total_steps - steps_done) / total_steps


def _timing(steps_left: int, sec_per_step: float | None, left_s: float | None, limit_s: float | None, setup_now_s: float,
            extra_s: float = 0.0, final_s: float = 0.0) -> dict:
    """Hours, sessions and fit; later sessions each pay the setup again (a fresh VM) and keep the reserve.

    extra_s: validation and sampling still ahead, spread over the sessions with the steps; final_s: the
    sampling a session does when it stops, kept back in each session next to the save and margin.
    """
    steps_s = None if sec_per_step is None else max(0, steps_left) * sec_per_step
    train_s = None if steps_s is None else steps_s + extra_s
    reserve = RESERVE_S + final_s
    out = {
        "train_hours": None if steps_s is None else round(steps_s / HOUR, 2),
        "extra_hours": None if steps_s is None else round(extra_s / HOUR, 2),
        "total_hours": None if train_s is None else round((train_s + setup_now_s) / HOUR, 2),
        "session_hours_left": None if left_s is None else round(max(0.0, left_s) / HOUR, 2),
        "sessions_needed": 1,
        "fits": True,
    }
    if train_s is None:
        out.update(sessions_needed=None, fits=None if left_s is not None else True)
        return out
    if left_s is None:
        return out
    first = max(0.0, left_s - setup_now_s - reserve)
    if train_s <= first:
        return out
    later = (limit_s or 0.0) - SETUP_S - reserve
    sessions = None if later <= 0 else 1 + math.ceil((train_s - first) / later)
    out.update(sessions_needed=sessions, fits=False, total_hours=round((train_s + SETUP_S * (sessions or 1)) / HOUR, 2))
    return out


def _rate(config: TrainingConfig, eff: Effective, gpu: GpuInfo | None, precision: str, resolution: int) -> Rate:
    fast = gpu is not None and (precision == "fp16" or (precision == "bf16" and gpu.bf16_native))
    return lookup_rate(
        gpu.name if gpu else None, fast, resolution, eff.batch_size, config.gradient_accumulation_steps,
        eff.gradient_checkpointing, gpu.bf16_native if gpu else False, config.num_gpus, eff.compile_mode,
    )


def _memory_precision(eff: Effective, config: TrainingConfig) -> str:
    # A backend's fp16 without our fp32 islands (sd-scripts') holds what bf16 holds.
    return eff.precision if backend_for(config.trainer).numbers.fp16_islands or eff.precision != "fp16" else "bf16"


def _memory(eff: Effective, config: TrainingConfig, gpu: GpuInfo | None) -> MemoryEstimate:
    available = gpu.memory_gib if gpu else None
    precision = _memory_precision(eff, config)
    return check_memory(config.resolution, eff.batch_size, config.network_dim, eff.gradient_checkpointing, precision, available,
                        eff.compile_mode)


def _overrun_action(on_overrun: str, durable: bool) -> Literal["stop", "resume", "proceed"]:
    if on_overrun == "auto":
        return "resume" if durable else "stop"
    return on_overrun  # type: ignore[return-value]


OLDEST_CAPABILITY = (7, 0)  # PyTorch's cu12.8+ wheels dropped Pascal (sm_60) and older

# Where the GPU switch is on each notebook platform (a CPU session cannot train the real model).
NO_GPU_FIX = {
    "colab": "Runtime > Change runtime type > T4 GPU",
    "kaggle": "Settings > Accelerator > GPU T4 x2",
}


def _decide(plan: Plan, config: TrainingConfig, gpu: GpuInfo | None) -> tuple[Decision, str]:
    """ok when it fits (or cannot be timed); otherwise the overrun action, refusing resume without durable storage."""
    if gpu is not None and plan.gpu_source == "detected" and not gpu.usable:
        return "stop", (
            f"{gpu.name} ({gpu.sm}) cannot run this PyTorch build (kernels for {', '.join(gpu.arch_list)}); "
            "pick another GPU (on Kaggle: T4 x2 or L4) or install a PyTorch build that supports it"
        )
    if gpu is not None and plan.gpu_source == "named" and gpu.capability and gpu.capability < OLDEST_CAPABILITY:
        # The same refusal a detected one gets (gpu.usable), without a torch on this machine to ask.
        return "stop", (
            f"{gpu.name} ({gpu.sm}) has no kernels in the CUDA 12.8+ PyTorch builds that Colab, Kaggle and this "
            f"package install; pick a T4 or newer (on Kaggle: {NO_GPU_FIX['kaggle']})"
        )
    if gpu is None and plan.gpu_source == "none" and not config.models_dir:
        if plan.platform_kind in NO_GPU_FIX:
            return "stop", f"this {plan.platform_kind} session has no GPU: {NO_GPU_FIX[plan.platform_kind]}, then run again"
        return "stop", (
            "this machine has no CUDA GPU, and the Anima model (a 5.6 GB download) cannot train on a CPU: run on a "
            f"GPU runtime (Colab, Kaggle or a machine with an NVIDIA GPU), or pass {spoken(setting('models_dir'))} with a small local "
            "model such as the demo's"
        )
    if config.num_gpus > 1 and plan.gpu_source != "named" and config.num_gpus > (gpu.count if gpu else 0):
        have = f"{gpu.count} ({gpu.name})" if gpu else "none"
        fix = f"; on Kaggle: {NO_GPU_FIX['kaggle']}" if plan.platform_kind == "kaggle" else ""
        return "stop", spoken(f"{setting('num_gpus', config.num_gpus)} needs {config.num_gpus} CUDA GPUs, this machine has {have}: "
                              f"use {setting('num_gpus', gpu.count if gpu else 1)}{fix}")
    if config.compile_mode == "cuda-graphs" and gpu is None and plan.gpu_source != "named":
        return "stop", spoken(cuda_graphs_need_cuda())  # the trainer would refuse it after the download
    if plan.fits is not False:
        return "ok", ""
    if plan.sessions_needed is None:
        return "stop", (
            f"a session of {plan.session_limit_hours} h is too short for setup and a checkpoint; "
            f"raise {spoken(setting('session_budget_hours'))} or train on a machine without a session limit"
        )
    extra = f" (+{plan.extra_hours:.1f} h validation and sampling)" if plan.extra_hours else ""
    reason = (
        f"{plan.steps.total_steps - plan.steps_done} steps at ~{plan.sec_per_step:.3g} s/step need {plan.train_hours:.1f} h{extra}, "
        f"but this session has {plan.session_hours_left:.1f} h left (setup {plan.setup_hours:g} h); "
        f"the run needs {plan.sessions_needed} sessions"
    )
    if plan.overrun_action == "resume" and not plan.storage_durable:
        return "stop", (
            f"{reason}, and storage {config.storage!r} is this VM's local disk, lost with the session; "
            f"set {spoken(setting('storage'))} to /content/drive/MyDrive/..., /kaggle/working/..., gs://, s3:// or hf:// to train "
            "across sessions"
        )
    if plan.overrun_action == "stop":
        return "stop", spoken(f"{reason}; pass {setting('on_overrun', 'resume')} with a durable {setting('storage')}, or a suggestion below")
    return plan.overrun_action, reason


def _suggestions(config: TrainingConfig, eff: Effective, samples: Mapping, plan: Plan, gpu: GpuInfo | None,
                 left_s: float | None) -> list[Suggestion]:
    """Changes that finish in this session: fewer epochs, fewer repeats, fp16 on a T4, 512 px, or resume."""
    if plan.sec_per_step is None or left_s is None:
        return []
    final = plan.extras.last_sampling_s if plan.extras else 0.0
    share = plan.extras.share_of_training if plan.extras and plan.extras.share_of_training else 0.0
    seconds = max(0.0, left_s - SETUP_S - RESERVE_S - final)
    # A step carries its share of validation and sampling.
    budget = max_steps_within(seconds, plan.sec_per_step * (1 + share)) + plan.steps_done
    batch, accum, epochs = eff.batch_size, eff.micro_batches_per_step, config.max_train_epochs
    out: list[Suggestion] = []
    best_epochs = largest_epochs(samples, batch, accum, epochs, budget)
    if best_epochs:
        steps = count_steps(samples, batch, accum, best_epochs).total_steps
        out.append(_suggestion(plan, "max_train_epochs", best_epochs, steps, flag("max_train_epochs", best_epochs)))
    best_repeats = largest_repeats(samples, config.repeats, batch, accum, epochs, budget)
    if best_repeats:
        steps = count_steps(with_repeats(samples, config.repeats, best_repeats), batch, accum, epochs).total_steps
        out.append(_suggestion(plan, "repeats", best_repeats, steps, flag("repeats", best_repeats)))
    out += _speed_suggestions(config, eff, plan, gpu, seconds)
    if plan.overrun_action != "resume" and plan.sessions_needed:
        out.append(Suggestion(
            setting="on_overrun", value="resume", total_steps=plan.steps.total_steps, hours=plan.total_hours,
            text=spoken(f"{setting('on_overrun', 'resume')} with a durable {setting('storage')}: train across {plan.sessions_needed} sessions"),
        ))
    return out


def _speed_suggestions(config: TrainingConfig, eff: Effective, plan: Plan, gpu: GpuInfo | None, seconds: float) -> list[Suggestion]:
    """fp16 where bf16 is emulated, and 512 px, each only when the whole run would then fit."""
    out = []
    remaining = plan.steps.total_steps - plan.steps_done
    if gpu is not None and plan.precision in ("bf16", "no") and not gpu.bf16_native:
        rate = _rate(config, eff, gpu, "fp16", config.resolution)
        if rate.sec_per_step and remaining * rate.sec_per_step <= seconds:
            out.append(_suggestion(plan, "mixed_precision", "fp16", plan.steps.total_steps,
                                   flag("mixed_precision", "fp16") + f" (bf16 is emulated on {gpu.name})", rate.sec_per_step))
    if config.resolution > 512:
        rate = _rate(config, eff, gpu, plan.precision, 512)
        if rate.sec_per_step and remaining * rate.sec_per_step <= seconds:
            out.append(_suggestion(plan, "resolution", 512, plan.steps.total_steps, flag("resolution", 512), rate.sec_per_step))
    return out


def _suggestion(plan: Plan, setting: str, value, steps: int, flag: str, sec_per_step: float | None = None) -> Suggestion:
    sec = sec_per_step or plan.sec_per_step
    hours = round((steps - plan.steps_done) * sec / HOUR, 2)
    return Suggestion(setting=setting, value=value, total_steps=steps, hours=hours, text=f"{flag}: {steps} steps, ~{hours:.1f} h")


def flag(name: str, value) -> str:
    """A TrainingConfig field set to `value`, as the current audience writes it (`--network-dim 8` on the CLI)."""
    return spoken(setting(name, value))


def _warnings(config: TrainingConfig, plan: Plan, gpu: GpuInfo | None, platform: PlatformInfo) -> list[str]:
    out = []
    if gpu is None:
        out.append("no GPU: only the demo's tiny model trains on CPU; the time is measured once training starts")
    elif plan.sec_per_step is None:
        out.append(spoken(f"{gpu.name} is not in the speed table: time is measured once training starts (or plan with {setting('gpu', 'NAME')})"))
    if gpu is not None and plan.gpu_source == "detected" and gpu.count > 1 and config.num_gpus == 1 and backend_for(config.trainer).multi_gpu:
        out.append(f"this machine has {gpu.count} GPUs and the run uses one: {flag('num_gpus', gpu.count)} trains on all of them "
                   f"(about {gpu.count}x fewer steps per epoch)")
    if gpu is not None and plan.precision == "bf16" and not gpu.bf16_native:
        out.append(spoken(f"bf16 on {gpu.name} ({gpu.sm}) is emulated at fp32 speed; {setting('mixed_precision', 'auto')} (fp16 here) is ~3x faster"))
    extras = plan.extras
    if gpu is not None and extras and extras.sampling_peak_gib and extras.sampling_peak_gib > gpu.memory_gib * USABLE_SHARE:
        out.append(f"sampling needs ~{extras.sampling_peak_gib:.1f} GiB with the VAE decoder ({extras.vae_decoder_gib:.1f} GiB), more than "
                   f"{gpu.name}'s {gpu.memory_gib * USABLE_SHARE:.1f} usable GiB: sample smaller (--w/--h in the prompt file) or "
                   + flag("sample_every_n_epochs", 0))
    if plan.memory.fits is False:
        fix = "; ".join(" ".join(flag(k, v) for k, v in o.changes.items()) + f" ({o.predicted_gib:.1f} GiB)" for o in plan.memory.options)
        out.append(
            f"predicted peak {plan.memory.predicted_gib:.1f} GiB exceeds {gpu.name}'s {plan.memory.available_gib:.1f} GiB"
            + (f"; would fit with: {fix}" if fix else "; no setting change fits: use a GPU with more memory")
        )
    if plan.decision == "resume" and platform.kind == "kaggle" and platform.batch:
        out.append("Kaggle Save & Run: attach this version's output as input of the next version to resume from it")
    return out
