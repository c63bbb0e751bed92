"""`python -m anima_lora_flow.trainer` end to end: events file, final LoRA, exit codes, SIGTERM -> state + exit 3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from anima_lora_flow.trainer.events import read_events
from anima_lora_flow.trainer.lora import load_lora_file
from anima_lora_flow.trainer.run import TrainJob


def _start(tmp_path, items, tiny_model, config, name):
    # One work dir for the module: the second subprocess reuses the first one's caches.
    work = tmp_path.parent / "shared-work"
    job = TrainJob(config, [i.to_json() for i in items], str(tiny_model), str(work), str(tmp_path / name))
    job_file = job.save(tmp_path / f"{name}.json")
    events = tmp_path / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "anima_lora_flow.trainer", "--job", str(job_file), "--events", str(events)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), events


def test_subprocess_runs_to_the_end(tmp_path, items, tiny_model, tiny_config):
    proc, events_file = _start(tmp_path, items, tiny_model, tiny_config(max_train_epochs=1), "run")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    events = list(read_events(events_file))
    assert events[0].event == "plan" and events[0].total_steps == 3
    done = events[-1]
    assert done.event == "done" and done.step == 3
    assert load_lora_file(done.lora)  # a real safetensors file with tensors
    assert err.count("\n") < 40  # one refreshing progress line, not a wall of lines


def test_sigterm_saves_a_state_and_exits_3(tmp_path, items, tiny_model, tiny_config):
    config = tiny_config(max_train_epochs=1000, save_every_n_epochs=0)
    proc, events_file = _start(tmp_path, items, tiny_model, config, "sig")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if events_file.exists() and any(e.event == "step" for e in read_events(events_file)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]
    stopped = list(read_events(events_file))[-1]
    assert stopped.event == "stopped" and stopped.reason == "SIGTERM"
    assert (tmp_path / "sig" / "state").is_dir() and stopped.state.startswith(str(tmp_path / "sig" / "state"))
