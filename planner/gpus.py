"""Known GPUs: memory (as torch reports it), compute capability and the names users and torch give them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.gpu import GpuInfo
from ..errors import UserInputError, setting


@dataclass(frozen=True)
class GpuSpec:
    """A GPU model. `keys` are token groups; a name matches when it holds every token of one group."""

    name: str
    memory_gib: float
    capability: tuple[int, int]
    keys: tuple[str, ...]
    notebook: bool = False  # lent by Colab or Kaggle, so a plan for it assumes their 12 h session


# More specific entries first (A100 80GB before A100). Memory is total_memory in GiB, not the box label.
GPU_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("T4", 14.7, (7, 5), ("t4",), notebook=True),
    GpuSpec("P100", 15.9, (6, 0), ("p100",), notebook=True),
    GpuSpec("V100 32GB", 31.7, (7, 0), ("v100 32gb",)),
    GpuSpec("V100", 15.8, (7, 0), ("v100",)),
    GpuSpec("L4", 22.5, (8, 9), ("l4",), notebook=True),
    GpuSpec("A10G", 22.0, (8, 6), ("a10g", "a10")),
    GpuSpec("A100 80GB", 79.2, (8, 0), ("a100 80gb",), notebook=True),
    GpuSpec("A100", 39.4, (8, 0), ("a100",), notebook=True),
    GpuSpec("H100", 79.1, (9, 0), ("h100",), notebook=True),
    GpuSpec("H200", 139.8, (9, 0), ("h200",)),
    GpuSpec("RTX 3060", 11.8, (8, 6), ("3060",)),
    GpuSpec("RTX 3090", 23.7, (8, 6), ("3090",)),
    GpuSpec("RTX 4090", 23.6, (8, 9), ("4090",)),
    GpuSpec("RTX 5060 Ti", 15.5, (12, 0), ("5060 ti",)),
    GpuSpec("RTX 5070 Ti", 15.5, (12, 0), ("5070 ti",)),
)


def _tokens(name: str) -> set[str]:
    # "NVIDIA A100-SXM4-80GB" -> {"a100", "sxm4", "80gb"}; vendor words carry no information.
    words = re.split(r"[^a-z0-9]+", name.lower())
    return {w for w in words if w and w not in {"nvidia", "geforce", "tesla", "rtx", "gpu", "pcie", "sxm", "sxm2", "sxm4", "sxm5"}}


def find_spec(name: str) -> GpuSpec | None:
    """The table entry for a torch device name or a user's --gpu value, case-insensitively."""
    tokens = _tokens(name)
    for spec in GPU_SPECS:
        if any(set(key.split()) <= tokens for key in spec.keys):
            return spec
    return None


def named_gpu(name: str) -> GpuInfo:
    """A GpuInfo for `--gpu NAME`, from the table.

    Raises:
        UserInputError: the name matches no known GPU (the message lists them).
    """
    spec = find_spec(name)
    if spec is None:
        known = ", ".join(s.name for s in GPU_SPECS)
        raise UserInputError(f"unknown GPU {name!r} for {setting('gpu')}; use one of: {known}", field="gpu")
    return GpuInfo(name=spec.name, memory_gib=spec.memory_gib, capability=spec.capability)


def is_notebook_gpu(name: str) -> bool:
    spec = find_spec(name)
    return bool(spec and spec.notebook)
