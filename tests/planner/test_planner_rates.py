"""Speed table lookups, FLOP scaling against anima-internals §C, and GPU name matching."""

import pytest

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.planner.gpus import GPU_SPECS, find_spec, named_gpu
from anima_lora_flow.planner.rates import RATE_TABLE, lookup_rate, step_tflop


class TestFlops:
    @pytest.mark.parametrize(
        ("resolution", "gc", "table"),
        [(768, True, 30.2), (768, False, 20.9), (512, True, 12.3), (512, False, 8.4), (1024, True, 60.9), (1024, False, 42.8)],
    )
    def test_matches_the_published_table(self, resolution, gc, table):
        assert step_tflop(resolution, 1, gc) == pytest.approx(table, rel=0.02)

    def test_linear_in_batch(self):
        assert step_tflop(768, 4) == pytest.approx(4 * step_tflop(768, 1))


class TestTable:
    def test_every_row_has_a_status_a_source_and_a_known_gpu(self):
        names = {s.name for s in GPU_SPECS}
        for row in RATE_TABLE:
            assert row.status in ("measured", "estimated")
            assert row.source
            assert row.gpu in names

    def test_every_gpu_has_a_fast_row(self):
        for spec in GPU_SPECS:  # memory variants too: `plan --gpu "A100 80GB"` must show a speed
            assert any(r.gpu == spec.name and r.speed == "fast" for r in RATE_TABLE), spec.name


class TestLookup:
    def test_seed_t4_bf16_is_the_measured_row(self):
        rate = lookup_rate("Tesla T4", False, 768, 1, 1, True)
        assert rate.sec_per_step == 14.4
        assert rate.status == "measured"

    def test_t4_fp16_is_faster_and_estimated(self):
        rate = lookup_rate("Tesla T4", True, 768, 1, 1, True)
        assert rate.sec_per_step < 14.4
        assert rate.status == "estimated"

    def test_launch_bound_h100_does_not_scale_by_flops_at_batch_1(self):
        # issue 22: at batch 1 the H100's step is host-bound (688 ms against a 38 ms FLOP limit), so a smaller
        # image or a second image in the batch costs no time; accumulation repeats the whole step.
        base = lookup_rate("H100", True, 768, 1, 1, True).sec_per_step
        assert lookup_rate("H100", True, 512, 1, 1, True).sec_per_step == pytest.approx(base)
        assert lookup_rate("H100", True, 768, 2, 3, True).sec_per_step == pytest.approx(base * 3)
        assert lookup_rate("H100", True, 768, 2, 1, True).status == "estimated"

    def test_compute_bound_gpu_scales_by_flops(self):
        # A T4 at fp16 is compute-bound: 1024² costs the FLOP ratio, a batch of 2 twice the time.
        base = lookup_rate("T4", True, 768, 1, 1, True).sec_per_step
        assert lookup_rate("T4", True, 1024, 1, 1, True).sec_per_step == pytest.approx(base * 60.9 / 30.2, rel=0.03)
        assert lookup_rate("T4", True, 768, 2, 1, True).sec_per_step == pytest.approx(base * 2, rel=0.01)

    def test_row_at_another_resolution_scales_down(self):
        # The RTX 4090 row is measured at 1024²; 768² costs about half the FLOPs, but not less than the
        # host's 688 ms floor per eager step.
        assert lookup_rate("RTX 4090", True, 768, 1, 1, True).sec_per_step == pytest.approx(2.8 * 0.688 / 1.313, rel=0.02)

    def test_measured_compile_modes_on_the_h100(self):
        for mode, gc, ms in (("blocks", True, 330), ("model", True, 226), ("cuda-graphs", False, 87.9)):
            rate = lookup_rate("H100", True, 768, 1, 1, gc, compile_mode=mode)
            assert rate.sec_per_step == pytest.approx(ms / 1000) and rate.status == "measured"
        assert lookup_rate("H100", True, 768, 1, 1, False, compile_mode="model").status == "estimated"

    def test_slow_path_without_a_row_uses_the_factor(self):
        fast = lookup_rate("A100", True, 768, 1, 1, True).sec_per_step
        slow = lookup_rate("A100", False, 768, 1, 1, True, bf16_native=True)
        assert slow.sec_per_step == pytest.approx(fast * 2.0)
        assert "estimated" in slow.source

    def test_cpu_and_unknown_gpus_claim_no_time(self):
        assert lookup_rate(None, False, 768, 1, 1, True).sec_per_step is None
        unknown = lookup_rate("Matrox G200", True, 768, 1, 1, True)
        assert unknown.sec_per_step is None and unknown.status == "run-time"


class TestNames:
    @pytest.mark.parametrize(
        ("name", "spec"),
        [
            ("Tesla T4", "T4"), ("t4", "T4"), ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA A100-SXM4-80GB", "A100 80GB"),
            ("a100", "A100"), ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA L4", "L4"), ("l4", "L4"), ("RTX 4090", "RTX 4090"),
            ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("Tesla P100-PCIE-16GB", "P100"), ("rtx 5070 ti", "RTX 5070 Ti"),
        ],
    )
    def test_match(self, name, spec):
        assert find_spec(name).name == spec

    def test_l40s_is_not_an_l4(self):
        assert find_spec("NVIDIA L40S") is None

    def test_unknown_named_gpu_lists_the_known_ones(self):
        with pytest.raises(UserInputError, match="T4, P100"):
            named_gpu("Voodoo 2")

    def test_named_gpu_carries_capability(self):
        t4 = named_gpu("T4")
        assert t4.capability == (7, 5) and not t4.bf16_native
        assert named_gpu("l4").bf16_native
