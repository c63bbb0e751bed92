"""A user's mistake inside the flow reaches the console once, as the CLI's `error:` line."""

from __future__ import annotations

import json
import logging
import sys
import uuid

import pytest

from anima_lora_flow.cli import _no_console_echo_of_user_errors
from anima_lora_flow.core.dataset_report import DatasetError
from anima_lora_flow.errors import NotBuiltError
from anima_lora_flow.runner.resume import ResumeRefusedError


def _record(msg: str, exc: BaseException | None = None, level: int = logging.ERROR, **run_ids: str) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    record = logging.LogRecord("prefect.task_runs" if "task_run_id" in run_ids else "prefect.flow_runs", level,
                               __file__, 1, msg, None, exc_info)
    record.__dict__.update(run_ids)  # what Prefect's run loggers add to every record (their `extra`)
    return record


@pytest.mark.parametrize("error", [DatasetError("x"), ResumeRefusedError("x"), NotBuiltError("x")])
def test_a_user_error_and_its_runs_final_states_are_not_echoed(error):
    """Prefect logs the exception once with the exception object, then each run's final state by text;
    the final states are known by the failed runs' ids, whatever their text says."""
    task_run, flow_run = str(uuid.uuid4()), str(uuid.uuid4())
    records = [
        _record(f"Task run failed with exception: {error!r} - Retries are exhausted", error, task_run_id=task_run,
                flow_run_id=flow_run),
        _record("Finished in state Failed('Task run encountered an exception')", task_run_id=task_run, flow_run_id=flow_run),
        _record(f"Encountered exception during execution: {error!r}", error, flow_run_id=flow_run),
        _record("Finished in state Failed('Flow run encountered an exception')", level=logging.INFO, flow_run_id=flow_run),
    ]
    assert [_no_console_echo_of_user_errors(r) for r in records] == [False] * 4


def test_other_failures_and_other_runs_are_kept():
    task_run, other_task, flow_run = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    assert _no_console_echo_of_user_errors(
        _record("Task run failed with exception: DatasetError('x')", DatasetError("x"), task_run_id=task_run,
                flow_run_id=flow_run)) is False
    kept = [
        _record("Encountered exception during execution: RuntimeError('boom')", RuntimeError("boom"), flow_run_id=flow_run),
        _record("Finished in state Failed('Task run encountered an exception')", task_run_id=other_task, flow_run_id=flow_run),
        _record("Finished in state Completed()", level=logging.INFO, flow_run_id=str(uuid.uuid4())),
        _record("a DatasetError: mentioned in passing", level=logging.INFO),
    ]
    assert [_no_console_echo_of_user_errors(r) for r in kept] == [True] * 4


def test_a_user_error_raised_in_a_flow_is_printed_once(prefect_harness, tmp_path, capfd, monkeypatch):
    from prefect import flow, task

    import anima_lora_flow.flows.train_lora as train_module

    @task(name="prepare")
    def prepare():
        raise DatasetError("the dataset has no captions; add a .txt next to each image")

    @flow(name="fake-train")
    def fake_train(config, dry_run=False):
        prepare()

    monkeypatch.setattr(train_module, "train_lora", fake_train)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    try:
        from anima_lora_flow.cli import main

        code = main(["train", "--dataset", str(tmp_path), "--storage", str(tmp_path / "s"), "--work-dir", str(tmp_path / "w")])
    finally:
        for handler in handlers:
            handler.removeFilter(_no_console_echo_of_user_errors)
    err = capfd.readouterr().err
    assert code == 2
    assert err.count("the dataset has no captions") == 1, err
    assert "error: the dataset has no captions" in err and "Error logging to API" not in err


def _run_fake_train(tmp_path, monkeypatch, capfd, *flags):
    """`anima-lora train` on a flow that logs what the real one does: Prefect INFO lines, a warning, the
    plan (flagged for the console), and progress drawn from trainer events under log_prints."""
    from prefect import flow, get_run_logger, task
    from prefect.runtime import flow_run

    import anima_lora_flow.flows.train_lora as train_module
    from anima_lora_flow.trainer.events import Done, Plan, Step
    from anima_lora_flow.ui.console import FOR_CONSOLE
    from anima_lora_flow.ui.progress import ConsoleProgress

    @task(name="train")
    def train():
        get_run_logger().info("checkpoint (state) at step 12")
        bar = ConsoleProgress(echo_checkpoints=False, echo_messages=False)
        bar(Plan(total_steps=24, start_step=0))
        bar(Step(step=24, total_steps=24, loss=0.25, sec_per_step=0.5))
        bar(Done(lora="x"))

    @flow(name="fake-train", log_prints=True)
    def fake_train(config, dry_run=False):
        logger = get_run_logger()
        logger.info("dataset: 6 images will be trained")
        logger.info("Plan for my_lora\n  Steps     24", extra=FOR_CONSOLE)
        logger.warning("the storage is almost full")
        train()
        return {"run_id": "r", "outcome": "completed", "steps_done": 24, "total_steps": 24,
                "flow_run_id": str(flow_run.get_id())}

    monkeypatch.setattr(train_module, "train_lora", fake_train)
    # The tests run Prefect at WARNING (conftest); a user's Prefect logs INFO, to the console and the API.
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            # Prefect's console writes to the stderr of the test that first configured it, closed since.
            monkeypatch.setattr(handler, "stream", sys.stderr)
            monkeypatch.setattr(handler.console, "file", sys.stderr)
    from anima_lora_flow.cli import main

    dataset = tmp_path / "d"
    dataset.mkdir(exist_ok=True)
    prefect_logger = logging.getLogger("prefect")
    level = prefect_logger.level
    prefect_logger.setLevel(logging.INFO)  # setLevel, not an assignment: it clears the loggers' cached levels
    try:
        code = main(["train", "--dataset", str(dataset), "--storage", str(tmp_path / "s"),
                     "--work-dir", str(tmp_path / "w"), "--json", *flags])
    finally:
        prefect_logger.setLevel(level)
    captured = capfd.readouterr()
    assert code == 0, captured.err
    return captured, json.loads(captured.out[captured.out.index("{"):])


def test_the_console_is_quiet_by_default_and_the_ui_keeps_every_line(prefect_harness, tmp_path, monkeypatch, capfd):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    captured, result = _run_fake_train(tmp_path, monkeypatch, capfd)
    assert "| INFO" not in captured.err and "Finished in state" not in captured.err, captured.err
    assert "dataset: 6 images" not in captured.err and "checkpoint (state)" not in captured.err
    assert "Plan for my_lora\n  Steps     24\n" in captured.err  # as written, without a log prefix
    assert "the storage is almost full" in captured.err
    assert "training: step 24/24 (100%), loss 0.2500, 0.50 s/step" in captured.out  # not swallowed by log_prints
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[result["flow_run_id"]])))
    messages = "\n".join(log.message for log in logs)
    assert "dataset: 6 images will be trained" in messages and "checkpoint (state) at step 12" in messages
    assert "Finished in state Completed" in messages


def test_verbose_shows_prefects_info_lines(prefect_harness, tmp_path, monkeypatch, capfd):
    captured, _ = _run_fake_train(tmp_path, monkeypatch, capfd, "--verbose")
    assert "| INFO" in captured.err and "dataset: 6 images will be trained" in captured.err
    assert "checkpoint (state) at step 12" in captured.err and "the storage is almost full" in captured.err
