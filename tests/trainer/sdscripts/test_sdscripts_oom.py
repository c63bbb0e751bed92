"""OOM detection and advice computed from the settings."""

from __future__ import annotations

from pathlib import Path

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.trainer.sdscripts.command import build_command, format_command
from anima_lora_flow.trainer.sdscripts.oom import detect_oom, kernel_oom_lines, oom_advice, oom_suggestions

FIXTURES = Path(__file__).parent / "fixtures"


def _config(**kw) -> TrainingConfig:
    return TrainingConfig(dataset="/d", **kw)


def test_detects_cuda_oom_in_output():
    assert detect_oom((FIXTURES / "cuda_oom.log").read_text(encoding="utf-8").splitlines())
    assert detect_oom(["torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB"])
    assert not detect_oom((FIXTURES / "fresh_run.log").read_text(encoding="utf-8").splitlines())


def test_suggestions_step_down_from_the_current_settings():
    assert oom_suggestions(_config()) == ["--network-dim 10", "--resolution 640", "keep gradient checkpointing on"]
    assert oom_suggestions(_config(network_dim=10, resolution=640)) == [
        "--network-dim 8", "--resolution 512", "keep gradient checkpointing on",
    ]  # fmt: skip
    tips = oom_suggestions(_config(network_dim=64, resolution=1024, batch_size=2, gradient_accumulation_steps=2,
                                   gradient_checkpointing=False, mixed_precision="no"))  # fmt: skip
    assert tips == [
        "--network-dim 32", "--resolution 896", "--batch-size 1 --gradient-accumulation-steps 4",
        "--mixed-precision auto", "--gradient-checkpointing (turn it on)",
    ]  # fmt: skip


def test_advice_at_the_floor_says_so():
    advice = oom_advice(_config(network_dim=8, resolution=512, min_bucket_reso=256), gpu_memory_gib=4.0)
    assert "already the smallest" in advice and "4.0 GiB" in advice and "--network-dim" not in advice


def test_advice_text():
    advice = oom_advice(_config(), gpu_memory_gib=15.0)
    assert advice.startswith("Training ran out of GPU memory")
    assert "--network-dim 10, --resolution 640, keep gradient checkpointing on" in advice
    assert "GiB" not in advice  # a big enough GPU: no hardware remark
    assert "RAM" in oom_advice(_config(), None, kernel=True)


def test_kernel_log_is_optional():
    assert isinstance(kernel_oom_lines(), list)  # dmesg unreadable or absent: an empty list, no error


def test_command_matches_the_seed_plus_simple_logging():
    cmd = build_command("/cache/sd-scripts", "/cfg/a b.toml", "/cfg/d.toml", python="/cache/venv/bin/accelerate")
    assert cmd == [
        "/cache/venv/bin/accelerate", "launch", "--num_cpu_threads_per_process", "1",
        "/cache/sd-scripts/anima_train_network.py", "--config_file", "/cfg/a b.toml",
        "--dataset_config", "/cfg/d.toml", "--console_log_simple",
    ]  # fmt: skip
    assert format_command(cmd).startswith("/cache/venv/bin/accelerate launch") and "'/cfg/a b.toml'" in format_command(cmd)
    assert build_command("/s", "/t", "/d", python="/venv/bin/python3")[:3] == ["/venv/bin/python3", "-m", "accelerate.commands.launch"]
