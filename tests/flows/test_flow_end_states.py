"""How a run ends, as a Prefect user sees it: a session stopped at its deadline is Completed, named
"Stopped", with the resume advice; a run whose trainer dies still publishes its summary (with the
reason), its loss table and its loss chart (an embedded PNG) before the flow fails."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from anima_lora_flow.demo import demo_config
from anima_lora_flow.planner.guard import SessionGuard


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_config(tmp_path_factory.mktemp("endstates"))


def _run(demo, tmp_path, project: str):
    cfg = demo.model_copy(update={"project_name": project, "storage": str(tmp_path / "runs"),
                                  "work_dir": str(tmp_path / "work")})
    return cfg, Path(cfg.work_dir)


def _trainer_started(work_dir: Path, kind: str) -> bool:
    """Whether this work dir's trainer has written an event of `kind` (its stop handler is live by then)."""
    return any(f'"event": "{kind}"' in p.read_text() for p in work_dir.glob("runs/*/events.jsonl"))


class _SessionEndsOnceTrainingStarts(SessionGuard):
    """The session's clock, sped up: the end comes near as soon as the trainer has planned its run."""

    def __init__(self, work_dir: Path):
        super().__init__(deadline_ts=None)
        self.work_dir = work_dir

    def should_stop(self, sec_per_step: float = 0.0) -> bool:
        return _trainer_started(self.work_dir, "plan")


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key}"
    return max(found, key=lambda a: a.created)


def test_a_deadline_stop_ends_completed_named_stopped_with_the_advice(prefect_harness, demo, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client

    from anima_lora_flow.flows import train_lora as flow_module

    cfg, work_dir = _run(demo, tmp_path, "stopped")
    monkeypatch.setattr(flow_module, "guard_for", lambda *args, **kwargs: _SessionEndsOnceTrainingStarts(work_dir))
    result = flow_module.train_lora(config=cfg)  # as the CLI and the notebooks call it: they get the dict

    assert result["outcome"] == "stopped" and result["stop_reason"] == "deadline"
    assert 1 <= result["steps_done"] < result["total_steps"]
    advice = (f"saved a resumable state at step {result['steps_done']} and stopped (deadline); "
              "run the same command or cell again in a new session to continue")
    runs = [json.loads(line) for line in (Path(cfg.storage) / "stopped" / "runs.jsonl").read_text().splitlines()]
    with get_client(sync_client=True) as client:  # what the UI's run list shows
        state = client.read_flow_run(runs[-1]["flow_run_id"]).state
    assert (state.type.value, state.name, state.message) == ("COMPLETED", "Stopped", advice)
    summary = _artifact("summary-stopped").data
    assert "# stopped: stopped" in summary and advice[1:] in summary


def _kill_trainer_after_first_loss(work_dir: Path, done: threading.Event) -> None:
    """The kernel's OOM killer, played by hand: SIGKILL the trainer's group once it has reported a loss."""
    while not done.is_set():
        if any(re.search(r'"event": "step".*"loss": [0-9]', p.read_text()) for p in work_dir.glob("runs/*/events.jsonl")):
            for proc in Path("/proc").iterdir():
                try:
                    cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"anima_lora_flow.trainer" in cmdline and any(str(work_dir).encode() in part for part in cmdline):
                    os.killpg(int(proc.name), signal.SIGKILL)
                    return
        time.sleep(0.02)


def test_a_failed_run_publishes_its_summary_loss_table_and_chart(prefect_harness, demo, tmp_path):
    from anima_lora_flow.flows.train_lora import train_lora

    cfg, work_dir = _run(demo, tmp_path, "killed")
    done = threading.Event()
    killer = threading.Thread(target=_kill_trainer_after_first_loss, args=(work_dir, done), daemon=True)
    killer.start()
    try:
        state = train_lora(config=cfg, return_state=True)
    finally:
        done.set()
        killer.join(timeout=5)

    assert state.is_failed()
    summary = _artifact("summary-killed").data
    assert summary.startswith("# killed: failed")
    step = int(re.search(r"\| steps \| (\d+) of 24", summary).group(1))
    assert step >= 1
    assert f"The run failed at step {step}:" in summary  # and why, as raised (markdown-escaped):
    assert f"> training failed at step {step}: the trainer was killed by SIGKILL" in summary
    assert re.search(r"\| last loss \| \d\.\d{1,3}(e-?\d+)? \|", summary)  # 4 significant digits, not a raw float

    table = _artifact("loss-killed").data
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows and all(set(row) == {"step", "loss"} for row in rows) and rows[-1]["step"] <= step

    chart = _artifact("loss-chart-killed").data
    assert "file://" not in chart
    encoded = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", chart).group(1)
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        assert image.format == "PNG" and image.size[0] > 100
