"""`--gpu NAME`: a GPU from the table in core/gpus.py (re-exported here for the planner's readers)."""

from __future__ import annotations

from ..core.gpu import GpuInfo
from ..core.gpus import GPU_SPECS, GpuSpec, find_spec
from ..errors import UserInputError, setting

__all__ = ["GPU_SPECS", "GpuSpec", "find_spec", "named_gpu", "is_notebook_gpu"]


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
