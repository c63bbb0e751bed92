"""Where this run executes (Colab, Kaggle, a Prefect worker, a local machine), its GPU and its session deadline."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from ..core.gpu import GpuInfo, query_torch_gpu
from ..errors import render, setting

PlatformKind = Literal["colab", "kaggle", "local", "prefect-worker"]

HOUR = 3600.0
# Documented maximum session lengths (competitors.md §5): Colab FAQ, Kaggle Notebooks docs.
COLAB_FREE_LIMIT_S = 12 * HOUR
KAGGLE_LIMIT_S = 12 * HOUR
# GPUs Colab lends only to paid plans; a T4 may be either tier.
_COLAB_PAID_GPUS = ("a100", "l4", "h100", "g4", "rtx pro")

GpuQuery = Callable[[], GpuInfo | None]


class PlatformInfo(BaseModel):
    """The detected platform. `deadline_ts` is when the session ends (None: no known limit)."""

    kind: PlatformKind
    tier: Literal["free", "paid"] | None = None  # Colab only; "free" also when it cannot be told
    batch: bool = False  # Kaggle "Save & Run All" (KAGGLE_KERNEL_RUN_TYPE=Batch): nobody is watching
    prefect_worker: bool = False  # a Prefect worker started this process (also on Colab/Kaggle)
    gpu: GpuInfo | None = None
    session_limit_s: float | None = None
    session_age_s: float = 0.0
    detected_at: float = Field(default_factory=time.time)
    notes: list[str] = Field(default_factory=list)

    @computed_field
    @property
    def deadline_ts(self) -> float | None:
        if self.session_limit_s is None:
            return None
        return self.detected_at - self.session_age_s + self.session_limit_s

    @property
    def ephemeral_disk(self) -> bool:
        """Colab and Kaggle VMs lose their local disk with the session."""
        return self.kind in ("colab", "kaggle")

    def remaining_s(self, now: float | None = None) -> float | None:
        deadline = self.deadline_ts
        return None if deadline is None else deadline - (time.time() if now is None else now)

    def describe(self) -> str:
        """One line for the plan: platform, tier/mode and GPU."""
        parts = [self.kind]
        if self.tier:
            parts.append(self.tier)
        if self.kind == "kaggle":
            parts.append("batch (Save & Run All)" if self.batch else "interactive")
        if self.prefect_worker and self.kind != "prefect-worker":
            parts.append("via Prefect worker")
        gpu = "no GPU (CPU)" if self.gpu is None else f"{self.gpu.name} ({self.gpu.memory_gib:.1f} GiB, {self.gpu.sm})"
        return f"{' '.join(parts)}, {gpu}"

    def with_session_budget(self, hours: float | None) -> "PlatformInfo":
        """The user's session length replaces the platform's; on Colab/Kaggle it still counts from VM start."""
        if hours is None:
            return self
        note = f"session length {hours:g} h set by session_budget_hours"
        return self.model_copy(update={"session_limit_s": hours * HOUR, "notes": [*self.notes, note]})


def detect_platform(
    env: Mapping[str, str] = os.environ,
    uptime_s: float | None = None,
    gpu: GpuInfo | GpuQuery | None = None,
    *,
    has_module: Callable[[str], bool] | None = None,
    session_budget_hours: float | None = None,
    now: float | None = None,
) -> PlatformInfo:
    """Detect the platform; every input is injectable so tests can simulate Colab, Kaggle or a worker.

    `uptime_s` is the machine's age (default: /proc/uptime less PID 1's start, i.e. the container's age);
    `gpu` is a GpuInfo, a query function, or None to ask torch.cuda.
    """
    has_module = has_module or _module_present
    now = time.time() if now is None else now
    gpu_info = gpu() if callable(gpu) else (gpu if gpu is not None else query_torch_gpu())
    worker = bool(env.get("PREFECT__FLOW_RUN_ID"))
    kind = _kind(env, has_module, worker)
    info = PlatformInfo(kind=kind, prefect_worker=worker, gpu=gpu_info, detected_at=now)
    if kind == "colab":
        info.tier = "paid" if gpu_info and _matches(gpu_info.name, _COLAB_PAID_GPUS) else "free"
        info.session_limit_s = COLAB_FREE_LIMIT_S
        if info.tier == "paid":
            info.notes.append(render(f"Colab paid GPU: assuming 12 h; Colab Pro+ runs up to 24 h (pass {setting('session_budget_hours', 24)})"))
    elif kind == "kaggle":
        info.batch = env.get("KAGGLE_KERNEL_RUN_TYPE", "").lower() == "batch"
        info.session_limit_s = KAGGLE_LIMIT_S
    if gpu_info is not None and not gpu_info.usable:
        info.notes.append(f"{gpu_info.name} ({gpu_info.sm}) has no kernels in this PyTorch build ({', '.join(gpu_info.arch_list)})")
    info = info.with_session_budget(session_budget_hours)
    if info.session_limit_s is not None and info.ephemeral_disk:
        info.session_age_s = _session_age(uptime_s, info)
    return info


def _kind(env: Mapping[str, str], has_module: Callable[[str], bool], worker: bool) -> PlatformKind:
    # The notebook platforms win over "prefect-worker": their session limit is what ends the run.
    if any(key in env for key in ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION")) or has_module("google.colab"):
        return "colab"
    if any(key in env for key in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE")) or has_module("kaggle_secrets"):
        return "kaggle"
    return "prefect-worker" if worker else "local"


def _session_age(uptime_s: float | None, info: PlatformInfo) -> float:
    """The VM's age, sanity-checked: an age beyond the session limit means uptime is not the session's."""
    age = machine_uptime_s() if uptime_s is None else uptime_s
    if age is None:
        info.notes.append("machine uptime unknown: counting the session from now")
        return 0.0
    if info.session_limit_s is not None and age >= info.session_limit_s:
        info.notes.append(f"uptime {age / HOUR:.1f} h exceeds the session limit: counting the session from now")
        return 0.0
    return max(0.0, age)


def machine_uptime_s(proc: str = "/proc") -> float | None:
    """Seconds since this machine (or container: PID 1's start) booted; None off Linux."""
    try:
        uptime = float(Path(proc, "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        # Field 22 of /proc/1/stat is PID 1's start in clock ticks after boot; the comm field may hold spaces.
        fields = Path(proc, "1", "stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        started = 0.0
    return max(0.0, uptime - started)


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _matches(name: str, keys: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(key in lowered for key in keys)
