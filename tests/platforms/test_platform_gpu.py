"""bf16 capability and whether the installed PyTorch build has kernels for the GPU."""

import pytest

from anima_lora_flow.core.gpu import GpuInfo, arch_supported, query_torch_gpu

CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize(
    ("capability", "arch_list", "usable"),
    [
        ((6, 0), CU128, False),  # Kaggle's P100 under a cu12.8 build (kaggle-cli#1151)
        ((7, 0), CU128, False),  # V100 dropped by the cu13 builds
        ((7, 5), CU128, True),
        ((8, 9), CU128, True),  # L4 / RTX 4090 run sm_86 cubins (same major, higher minor)
        ((12, 1), CU128, True),
        ((6, 1), ["sm_60"], True),
        ((9, 0), ["sm_80", "compute_80"], True),  # PTX JIT for newer devices
        ((7, 0), ["compute_80"], False),
        ((6, 0), [], True),  # nothing to check against
        (None, CU128, True),
    ],
)
def test_arch_supported(capability, arch_list, usable):
    assert arch_supported(capability, arch_list) is usable


def test_sm90a_suffix_parses():
    assert arch_supported((9, 0), ["sm_90a"])


def test_bf16_native_from_ampere():
    assert not GpuInfo(name="T4", memory_gib=15, capability=(7, 5)).bf16_native  # emulated only
    assert GpuInfo(name="A100", memory_gib=40, capability=(8, 0)).bf16_native
    assert not GpuInfo(name="?", memory_gib=1).bf16_native


def test_query_torch_gpu_on_this_machine():
    # No GPU here (CI): the real query must say so instead of failing.
    torch = pytest.importorskip("torch")
    info = query_torch_gpu()
    assert (info is None) == (not torch.cuda.is_available())
