"""Ctrl-C in a terminal: the run stops within seconds, exit 130, and says how to resume.

The whole foreground process group gets SIGINT. Prefect's own temporary server would be in that
group and die with the flow, whose clean-up then retried the dead API for minutes (found by a
new-user test); the CLI's server runs in its own session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from anima_lora_flow.trainer.events import read_events


def test_ctrl_c_during_training_ends_quickly_with_resume_advice(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "anima_lora_flow.cli", "demo", "--work-dir", str(tmp_path / "demo"), "--epochs", "500"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            events = list((tmp_path / "demo").rglob("events.jsonl"))
            if events and any(e.event == "step" for e in read_events(events[0])):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the demo ended before training started"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        interrupted = time.monotonic()
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "run the same command again to resume" in err
    assert "Connection refused" not in out + err and "EventsWorker failed" not in out + err
    assert took < 30, f"took {took:.0f} s to stop"
