"""The GPU this process would train on: name, memory, compute capability and whether PyTorch can use it."""

from __future__ import annotations

import os
import re
import sys

from pydantic import BaseModel, Field, computed_field

_ARCH = re.compile(r"^(sm|compute)_(\d+)[a-z]?$")


class GpuInfo(BaseModel):
    """One CUDA device as PyTorch sees it (or as the planner's table describes a named GPU)."""

    name: str
    memory_gib: float
    capability: tuple[int, int] | None = None
    count: int = 1
    # Architectures the installed PyTorch was built for ("sm_75", "compute_90"); empty = not checked.
    arch_list: list[str] = Field(default_factory=list)

    @computed_field
    @property
    def bf16_native(self) -> bool:
        """bf16 tensor cores exist from sm_80 (Ampere); a T4 (sm_75) only emulates bf16, at fp32 speed."""
        return self.capability is not None and self.capability >= (8, 0)

    @computed_field
    @property
    def usable(self) -> bool:
        """False when the installed PyTorch has no kernels for this GPU (a P100 under a cu12.8+ build)."""
        return arch_supported(self.capability, self.arch_list)

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else "sm_?"


def arch_supported(capability: tuple[int, int] | None, arch_list: list[str]) -> bool:
    """Whether a build for `arch_list` runs on a device of `capability`.

    A cubin for sm_XY runs on the same major with a minor >= Y; PTX (compute_XY) is JIT-compiled for
    any newer device. An empty list or unknown capability is not held against the GPU.
    """
    if capability is None or not arch_list:
        return True
    for arch in arch_list:
        match = _ARCH.match(arch.strip().lower())
        if not match:
            continue
        digits = match.group(2)
        built = (int(digits[:-1]), int(digits[-1]))
        if match.group(1) == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if match.group(1) == "compute" and built <= capability:
            return True
    return False


def no_gpu_device() -> bool:
    """True on a Linux machine with no GPU device node at all, where importing torch (seconds) could
    only say the same; plan and dry run stay fast there. Anywhere else torch is asked."""
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return False
    return not any(os.path.exists(node) for node in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))  # CUDA, ROCm, WSL2


def query_torch_gpu() -> GpuInfo | None:
    """Device 0 as torch.cuda reports it, or None without a CUDA build or device."""
    if no_gpu_device():
        return None
    try:
        import torch  # noqa: PLC0415 - importing torch costs seconds; only when no GPU was injected
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(
        name=props.name,
        memory_gib=round(props.total_memory / 2**30, 2),
        capability=(props.major, props.minor),
        count=torch.cuda.device_count(),
        arch_list=list(torch.cuda.get_arch_list()),
    )
