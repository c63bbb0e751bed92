"""Platform detection in simulated environments: env vars, module presence, a fake uptime and GPU."""

import pytest

from anima_lora_flow.platforms.detect import detect_platform, machine_uptime_s
from anima_lora_flow.core.gpu import GpuInfo

NOW = 1_700_000_000.0
H = 3600.0
T4 = GpuInfo(name="Tesla T4", memory_gib=14.7, capability=(7, 5))
A100 = GpuInfo(name="NVIDIA A100-SXM4-40GB", memory_gib=39.4, capability=(8, 0))


def no_modules(_name):
    return False


def detect(env, **kw):
    kw.setdefault("gpu", T4)
    kw.setdefault("has_module", no_modules)
    return detect_platform(env, now=NOW, **kw)


class TestColab:
    def test_free_t4_with_a_fresh_vm(self):
        info = detect({"COLAB_RELEASE_TAG": "release-colab_2026"}, uptime_s=600)
        assert (info.kind, info.tier) == ("colab", "free")
        assert info.session_limit_s == 12 * H
        assert info.deadline_ts == NOW - 600 + 12 * H
        assert info.remaining_s(NOW) == 12 * H - 600
        assert info.ephemeral_disk

    def test_paid_gpu_is_paid_tier_with_a_pro_plus_hint(self):
        info = detect({"COLAB_GPU": "1"}, uptime_s=0, gpu=A100)
        assert info.tier == "paid"
        assert any("24" in note for note in info.notes)

    def test_module_presence_alone(self):
        info = detect({}, uptime_s=0, has_module=lambda name: name == "google.colab")
        assert info.kind == "colab"

    def test_budget_override_still_counts_from_vm_start(self):
        info = detect({"COLAB_GPU": "1"}, uptime_s=2 * H, session_budget_hours=24)
        assert info.session_limit_s == 24 * H
        assert info.remaining_s(NOW) == 22 * H

    def test_uptime_beyond_the_limit_is_not_the_sessions_age(self):
        info = detect({"COLAB_GPU": "1"}, uptime_s=40 * H)
        assert info.session_age_s == 0
        assert any("uptime" in note for note in info.notes)


class TestKaggle:
    @pytest.mark.parametrize(("run_type", "batch"), [("Interactive", False), ("Batch", True)])
    def test_run_type(self, run_type, batch):
        info = detect({"KAGGLE_KERNEL_RUN_TYPE": run_type}, uptime_s=H)
        assert info.kind == "kaggle" and info.batch is batch
        assert info.session_limit_s == 12 * H and info.session_age_s == H
        assert ("batch" in info.describe()) is batch

    def test_kaggle_secrets_module(self):
        assert detect({}, has_module=lambda name: name == "kaggle_secrets").kind == "kaggle"


class TestLocalAndWorker:
    def test_local_has_no_deadline(self):
        info = detect({}, uptime_s=99 * H)
        assert info.kind == "local"
        assert info.deadline_ts is None and info.remaining_s() is None
        assert info.session_age_s == 0  # a workstation's uptime says nothing about this run

    def test_local_budget_counts_from_now(self):
        info = detect({}, session_budget_hours=3)
        assert info.deadline_ts == NOW + 3 * H

    def test_prefect_worker(self):
        info = detect({"PREFECT__FLOW_RUN_ID": "0190-abc"})
        assert info.kind == "prefect-worker" and info.prefect_worker
        assert info.deadline_ts is None

    def test_worker_on_kaggle_keeps_kaggles_limit(self):
        info = detect({"PREFECT__FLOW_RUN_ID": "x", "KAGGLE_KERNEL_RUN_TYPE": "Batch"}, uptime_s=0)
        assert info.kind == "kaggle" and info.prefect_worker
        assert "via Prefect worker" in info.describe()


class TestGpuQuery:
    def test_fake_query_and_cpu(self):
        assert detect({}, gpu=lambda: None).gpu is None
        assert "CPU" in detect({}, gpu=lambda: None).describe()
        assert detect({}, gpu=lambda: T4).gpu.name == "Tesla T4"

    def test_unusable_gpu_is_noted(self):
        p100 = GpuInfo(name="Tesla P100-PCIE-16GB", memory_gib=15.9, capability=(6, 0), arch_list=["sm_75", "sm_80"])
        info = detect({"KAGGLE_URL_BASE": "https://www.kaggle.com"}, gpu=p100, uptime_s=0)
        assert not info.gpu.usable
        assert any("no kernels" in note for note in info.notes)

    def test_dump_includes_the_deadline(self):
        dumped = detect({"COLAB_GPU": "1"}, uptime_s=0).model_dump()
        assert dumped["deadline_ts"] == NOW + 12 * H
        assert dumped["gpu"]["bf16_native"] is False


class TestUptime:
    def test_container_age_from_proc(self, tmp_path):
        import os

        ticks = os.sysconf("SC_CLK_TCK")
        (tmp_path / "uptime").write_text("5000.50 1234.00\n")
        (tmp_path / "1").mkdir()
        fields = ["S"] + ["0"] * 18 + [str(1000 * ticks)]  # field 22 = starttime: 1000 s after boot
        (tmp_path / "1" / "stat").write_text("1 (tini (init)) " + " ".join(fields) + " 0 0\n")
        assert machine_uptime_s(str(tmp_path)) == pytest.approx(4000.5)

    def test_missing_proc(self, tmp_path):
        assert machine_uptime_s(str(tmp_path)) is None

    def test_no_stat_means_vm_uptime(self, tmp_path):
        (tmp_path / "uptime").write_text("42.0 1.0\n")
        assert machine_uptime_s(str(tmp_path)) == 42.0
