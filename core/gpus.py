"""Known GPUs: memory (as torch reports it), compute capability, tensor peak and the names users and torch give them.

Here, below effective.py, because the fast path (core/step_model.py) is chosen per GPU where every
effective number is derived; the planner's `--gpu NAME` lookup (planner/gpus.py) reads the same table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    """A GPU model. `keys` are token groups; a name matches when it holds every token of one group.

    peak_tflops: dense fp16/bf16 tensor-core peak from the datasheet (no sparsity); the step model
    scales the H100's measured times by it. A T4's is fp16 (its bf16 is emulated); a P100 has no
    tensor cores (its fp16 vector peak).
    """

    name: str
    memory_gib: float
    capability: tuple[int, int]
    keys: tuple[str, ...]
    notebook: bool = False  # lent by Colab or Kaggle, so a plan for it assumes their 12 h session
    peak_tflops: float | None = None


# More specific entries first (A100 80GB before A100). Memory is total_memory in GiB, not the box label.
GPU_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("T4", 14.7, (7, 5), ("t4",), notebook=True, peak_tflops=65.0),
    GpuSpec("P100", 15.9, (6, 0), ("p100",), notebook=True, peak_tflops=18.7),
    GpuSpec("V100 32GB", 31.7, (7, 0), ("v100 32gb",), peak_tflops=125.0),
    GpuSpec("V100", 15.8, (7, 0), ("v100",), peak_tflops=125.0),
    GpuSpec("L4", 22.5, (8, 9), ("l4",), notebook=True, peak_tflops=121.0),
    GpuSpec("A10G", 22.0, (8, 6), ("a10g", "a10"), peak_tflops=70.0),
    GpuSpec("A100 80GB", 79.2, (8, 0), ("a100 80gb",), notebook=True, peak_tflops=312.0),
    GpuSpec("A100", 39.4, (8, 0), ("a100",), notebook=True, peak_tflops=312.0),
    GpuSpec("H100", 79.1, (9, 0), ("h100",), notebook=True, peak_tflops=989.0),
    GpuSpec("H200", 139.8, (9, 0), ("h200",), peak_tflops=989.0),
    GpuSpec("RTX 3060", 11.8, (8, 6), ("3060",), peak_tflops=25.6),
    GpuSpec("RTX 3090", 23.7, (8, 6), ("3090",), peak_tflops=35.6),
    GpuSpec("RTX 4090", 23.6, (8, 9), ("4090",), peak_tflops=165.2),
    GpuSpec("RTX 5060 Ti", 15.5, (12, 0), ("5060 ti",), peak_tflops=47.0),
    GpuSpec("RTX 5070 Ti", 15.5, (12, 0), ("5070 ti",), peak_tflops=88.0),
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
