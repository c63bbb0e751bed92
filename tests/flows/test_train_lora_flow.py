"""The whole flow under a real Prefect server: the demo trains, the run store has its layout, the
artifacts are readable from the API, and a second run resumes instead of training again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from anima_lora_flow.demo import demo_config


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdemo")
    return demo_config(root, storage=str(root / "runs"))


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_demo_flow_end_to_end(prefect_harness, demo):
    from prefect.client.orchestration import get_client

    from anima_lora_flow.flows.train_lora import train_lora
    from anima_lora_flow.ui.console import for_console

    # Prefect's own set-up replaces the root's handlers (caplog's too): listen on its logger instead.
    prefect_logger, kept = logging.getLogger("prefect"), _Kept()
    level = prefect_logger.level
    prefect_logger.setLevel(logging.INFO)
    prefect_logger.addHandler(kept)
    try:
        result = train_lora(config=demo)
    finally:
        prefect_logger.removeHandler(kept)
        prefect_logger.setLevel(level)
    # What the CLI's quiet console shows besides warnings: the plan and where training starts.
    assert [r.getMessage().splitlines()[0] for r in kept.records if for_console(r)] == [
        "Plan for demo", "no saved state: starting at step 0"]
    assert result["outcome"] == "completed"
    assert result["steps_done"] == result["total_steps"] == 24
    project = Path(demo.storage) / "demo"
    assert (project / "checkpoints" / "demo.safetensors").stat().st_size > 0
    assert (project / "checkpoints" / "demo-000001.safetensors").exists()
    assert (project / "state" / "LATEST").read_text().strip() == "24"
    plan = json.loads((project / "plan.json").read_text())
    assert plan["steps"]["total_steps"] == 24
    assert plan["rate_status"] == "measured" and plan["sec_per_step"] > 0  # refined with the run's own rate
    runs = [json.loads(line) for line in (project / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["outcome"] == "completed"
    assert list((project / "configs").iterdir())
    assert list((project / "logs").glob("*.log"))

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
        keys = {a.key for a in artifacts if a.key}
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[-1]["flow_run_id"]])))
    # The flow's storage steps are tasks: the lock is taken before the download and given back last.
    order = [t.name.rsplit("-", 1)[0] for t in sorted(task_runs, key=lambda t: t.start_time)]
    assert [n for n in order if n in {"lock-project", "download_models_task", "train", "store-refined-plan",
                                      "unlock-project"}] == ["lock-project", "download_models_task", "train",
                                                             "store-refined-plan", "unlock-project"]
    assert not (project / "LOCK.json").exists()
    assert {"dataset-report-demo", "plan-demo", "summary-demo", "progress-demo", "loss-demo", "loss-chart-demo"} <= keys
    assert list((project / "logs").glob("*-loss.png"))
    # The demo samples at its end: the grid is in storage and the UI's artifact holds the image itself.
    assert [p.name for p in (project / "samples").glob("demo-step*.png")] == ["demo-step00000024.png"]
    grid = next(a for a in artifacts if a.key == "samples-demo")
    assert "](data:image/jpeg;base64," in grid.data and "step 24" in grid.data

    # Same command again: the finished state is found and nothing is trained twice.
    again = train_lora(config=demo)
    assert again["outcome"] == "completed" and again["start_step"] == 24


def test_dry_run_stops_before_models(prefect_harness, demo, tmp_path):
    from anima_lora_flow.flows.train_lora import train_lora

    cfg = demo.model_copy(update={"models_dir": str(tmp_path / "no-models-here"), "project_name": "dry"})
    result = train_lora(config=cfg, dry_run=True)
    assert result["outcome"] == "dry-run" and result["trainable_images"] == 6
