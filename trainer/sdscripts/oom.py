"""Out-of-memory detection (training output and kernel log) and advice computed from the settings."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable

from ...config import TrainingConfig
from ...errors import render, setting

_CUDA_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
_KERNEL_OOM = re.compile(r"Out of memory|Killed process|oom_reaper|oom-kill", re.IGNORECASE)
_STAMP = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\]")
# Resolutions to step down through (each a multiple of 64, as the buckets are).
_RESOLUTIONS = (2048, 1536, 1280, 1024, 896, 768, 640, 512)
# Measured/reported need of the defaults (dim 20, 768 px, batch 1, checkpointing): anima-internals §A2.
_DEFAULT_NEED_GIB = 6.0


def detect_oom(lines: Iterable[str]) -> bool:
    """True when the training output shows a CUDA out-of-memory error."""
    return any(_CUDA_OOM.search(line) for line in lines)


def uptime_seconds() -> float | None:
    """Seconds since boot (the clock dmesg stamps use), or None where /proc is unavailable."""
    try:
        with open("/proc/uptime", encoding="ascii") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def kernel_oom_lines(since_uptime: float | None = None, last: int = 200) -> list[str]:
    """OOM-killer lines among the kernel log's last lines; [] when dmesg is not readable.

    `since_uptime` (from `uptime_seconds()` at launch) drops older kills that were not ours.
    """
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, errors="replace")
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []  # e.g. "read kernel buffer failed: Operation not permitted" in containers
    found = []
    for line in out.stdout.splitlines()[-last:]:
        stamp = _STAMP.match(line)
        if since_uptime is not None and stamp and float(stamp.group(1)) < since_uptime:
            continue
        if _KERNEL_OOM.search(line):
            found.append(line)
    return found


def oom_suggestions(config: TrainingConfig) -> list[str]:
    """Concrete, smaller settings than the current ones, spelled for the current audience (`--network-dim 8`)."""
    tips = []
    if config.network_dim > 8:
        tips.append(setting("network_dim", max(8, config.network_dim // 2)))
    smaller = [r for r in _RESOLUTIONS if r < config.resolution]
    if config.resolution > 512 and smaller:
        tips.append(setting("resolution", max(smaller)))
    if config.batch_size > 1:
        # Keep the effective batch by accumulating instead.
        accum = config.batch_size * config.gradient_accumulation_steps
        tips.append(f"{setting('batch_size', 1)} {setting('gradient_accumulation_steps', accum)}")
    if config.mixed_precision == "no":
        tips.append(setting("mixed_precision", "auto"))
    if config.gradient_checkpointing is not False:  # unset is on for sd-scripts
        tips.append("keep gradient checkpointing on")
    else:
        tips.append(f"{setting('gradient_checkpointing', True)} (turn it on)")
    return [render(tip) for tip in tips]


def oom_advice(config: TrainingConfig, gpu_memory_gib: float | None, *, kernel: bool = False) -> str:
    """One paragraph: what ran out, and the smaller settings to try for this config."""
    what = (
        "The system ran out of RAM and the kernel killed the trainer"
        if kernel
        else "Training ran out of GPU memory (CUDA out of memory)"
    )
    tips = oom_suggestions(config)
    shrinkable = [t for t in tips if t.startswith("--")]
    if shrinkable:
        advice = f"{what}. Try: {', '.join(tips)}."
        advice += " These change the run, so it starts from step 0 rather than resuming."
    else:
        advice = f"{what}, and the settings are already the smallest this tool offers (dim 8, 512 px, batch 1)."
    if gpu_memory_gib is not None and not kernel and gpu_memory_gib < _DEFAULT_NEED_GIB:
        advice += (
            f" This GPU has {gpu_memory_gib:.1f} GiB; the defaults need about {_DEFAULT_NEED_GIB:.0f} GiB,"
            " so use a GPU with more memory if the smaller settings still fail."
        )
    if kernel:
        advice += " Close other programs or use a machine with more RAM (the models load into RAM first)."
    return advice
