"""The launcher with real subprocesses: stand-in scripts replay sd-scripts output, fail, or refuse to die."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.trainer.sdscripts.launch import SdScriptsFailed, kill_process_group, run_sd_scripts

FIXTURES = Path(__file__).parent / "fixtures"

REPLAY = """
import sys, time
data = open(sys.argv[1], "rb").read()
for i in range(0, len(data), 97):  # odd chunks, like a pipe under load
    sys.stdout.buffer.write(data[i : i + 97]); sys.stdout.buffer.flush(); time.sleep(0.001)
sys.exit(int(sys.argv[2]))
"""

# Stands in for `accelerate launch`: ignores SIGTERM and spawns a training "child" that does too.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write(f"{__import__('os').getpid()} {child.pid}")
n = 0
while True:
    n += 1
    sys.stderr.write(f"\\rsteps:   0%|          | {n}/1000 [00:0{n % 10}<?, 1.00s/it, avr_loss=0.1]"); sys.stderr.flush()
    time.sleep(0.05)
"""


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _gone(pid: int) -> bool:
    """Not running: vanished, or a zombie left for a reaper."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Echo:
    def __init__(self):
        self.calls = []

    def __call__(self, text, end="\n"):
        self.calls.append((text, end))


def test_success_streams_lines_and_redraws(tmp_path):
    events, echo = [], Echo()
    cmd = [sys.executable, _script(tmp_path, "replay.py", REPLAY), str(FIXTURES / "fresh_run.log"), "0"]
    result = run_sd_scripts(cmd, sink=events.append, echo=echo, log_tail=6)
    assert result.exit_code == 0 and not result.stopped
    assert result.final_lora == "/out/my_lora.safetensors" and result.last_step == 8
    assert [e.step for e in events if e.event == "step"] == list(range(1, 9))
    # Done is the entry's to say, once it has found the final LoRA on disk (trainer/sdscripts/__main__.py).
    assert "done" not in [e.event for e in events]
    assert [e.path for e in events if e.event == "checkpoint" and e.final] == ["/out/my_lora.safetensors"]
    redraws = [text for text, end in echo.calls if end == ""]
    assert redraws and all(t.startswith("\rsteps:") for t in redraws)  # in place, not a line each
    assert ("epoch 2/2", "\n") in echo.calls
    assert len(result.tail) == 6 and result.tail[-2] == "model saved."
    assert result.tail[-1].startswith("steps: 100%|")  # tqdm's redraw when the bar closes at exit


def test_failure_raises_with_oom_advice_and_tail(tmp_path):
    events = []
    cmd = [sys.executable, _script(tmp_path, "replay.py", REPLAY), str(FIXTURES / "cuda_oom.log"), "1"]
    config = TrainingConfig(dataset="/d")  # dim 20, 768 px, batch 1
    with pytest.raises(SdScriptsFailed) as err:
        run_sd_scripts(cmd, sink=events.append, echo=Echo(), config=config, gpu_memory_gib=14.7)
    message = str(err.value)
    assert "exit code 1" in message and "--network-dim 10" in message and "--resolution 640" in message
    result = err.value.result
    assert result.exit_code == 1 and result.oom_advice
    assert any("CUDA out of memory" in line for line in result.tail)
    assert events[-1].event == "error" and events[-1].oom is True
    assert isinstance(err.value, RuntimeError)


def test_plain_failure_names_the_last_output(tmp_path):
    script = _script(tmp_path, "boom.py", "import sys\nprint('ValueError: no image files found')\nsys.exit(3)\n")
    with pytest.raises(SdScriptsFailed, match=r"exit code 3.*no image files found") as err:
        run_sd_scripts([sys.executable, script], echo=Echo(), env={"PATH": "/nonexistent"})
    assert err.value.result.oom_advice is None


def test_kernel_oom_kill_gets_advice(tmp_path, monkeypatch):
    """A SIGKILL from the OOM killer leaves no trace in the output; the kernel log has it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_dmesg = bin_dir / "dmesg"  # a real program on PATH standing in for the kernel log
    fake_dmesg.write_text(
        f"#!{sys.executable}\n"
        "up = float(open('/proc/uptime').read().split()[0])\n"
        "print('[    1.000000] Out of memory: Killed process 1 (old)')\n"
        "print(f'[{up:12.6f}] Out of memory: Killed process 4242 (python) total-vm:30000000kB')\n"
    )
    fake_dmesg.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    script = _script(tmp_path, "killed.py", "import sys, time\ntime.sleep(0.2)\nsys.exit(1)\n")
    with pytest.raises(SdScriptsFailed) as err:
        run_sd_scripts([sys.executable, script], echo=Echo(), config=TrainingConfig(dataset="/d", batch_size=4))
    message = str(err.value)
    assert "ran out of RAM" in message and "Killed process 4242" in message and "(old)" not in message
    assert "--batch-size 1 --gradient-accumulation-steps 4" in message


def test_stop_request_kills_launcher_and_child(tmp_path):
    pids_file = tmp_path / "pids"
    cmd = [sys.executable, _script(tmp_path, "stubborn.py", STUBBORN), str(pids_file)]
    events = []
    started = time.monotonic()
    result = run_sd_scripts(
        cmd, sink=events.append, echo=Echo(), stop_requested=lambda: pids_file.exists() and time.monotonic() - started > 0.5,
        grace_s=1,
    )
    launcher, child = map(int, pids_file.read_text().split())
    assert result.stopped and result.last_step > 0
    assert events[-1].event == "stopped"
    assert _gone(launcher) and _gone(child)


def test_keyboard_interrupt_kills_the_group_and_reraises(tmp_path):
    pids_file = tmp_path / "pids"
    cmd = [sys.executable, _script(tmp_path, "stubborn.py", STUBBORN), str(pids_file)]

    def sink(event):
        if event.event == "step" and event.step >= 3:
            raise KeyboardInterrupt  # what a cell's stop button raises in the main thread

    with pytest.raises(KeyboardInterrupt):
        run_sd_scripts(cmd, sink=sink, echo=Echo(), grace_s=1)
    launcher, child = map(int, pids_file.read_text().split())
    assert _gone(launcher) and _gone(child)


def test_kill_process_group_is_quick_when_sigterm_is_honoured(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    started = time.monotonic()
    kill_process_group(proc, grace_s=10)
    assert proc.returncode == -15 and time.monotonic() - started < 5
    kill_process_group(proc)  # already gone: no error
