"""`python -m anima_lora_flow.trainer --stop-file PATH`: the file appearing stops the run like SIGTERM (state + exit 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from anima_lora_flow.trainer.events import read_events
from anima_lora_flow.trainer.run import TrainJob
from anima_lora_flow.trainer.state import PROGRESS_FILE


def test_stop_file_saves_a_state_and_exits_3(tmp_path, items, tiny_model, tiny_config):
    config = tiny_config(max_train_epochs=1000, save_every_n_epochs=0)
    job = TrainJob(config, [i.to_json() for i in items], str(tiny_model), str(tmp_path / "work"), str(tmp_path / "out"))
    job_file = job.save(tmp_path / "job.json")
    events_file, stop_file = tmp_path / "events.jsonl", tmp_path / "STOP"
    cmd = [sys.executable, "-m", "anima_lora_flow.trainer", "--job", str(job_file), "--events", str(events_file),
           "--stop-file", str(stop_file), "--no-progress"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if events_file.exists() and any(e.event == "step" for e in read_events(events_file)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the trainer ended before its first step event"
        stop_file.touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-2000:]
    events = list(read_events(events_file))
    stopped = events[-1]
    assert stopped.event == "stopped" and stopped.reason == "stop file"
    first_step = next(e.step for e in events if e.event == "step")
    assert first_step <= stopped.step < stopped.total_steps
    state = tmp_path / "out" / "state"
    assert stopped.state.startswith(str(state)) and (state / os.path.basename(stopped.state) / PROGRESS_FILE).is_file()
    assert stop_file.exists()  # the trainer leaves the file to whoever created it
