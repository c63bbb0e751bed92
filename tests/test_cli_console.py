"""A user's mistake inside the flow reaches the console once, as the CLI's `error:` line."""

from __future__ import annotations

import logging

import pytest

from anima_lora_flow.cli import _no_console_echo_of_user_errors
from anima_lora_flow.dataset.report import DatasetError


def _record(msg: str, exc: BaseException | None = None, level: int = logging.ERROR) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord("prefect.flow_runs", level, __file__, 1, msg, None, exc_info)


@pytest.mark.parametrize(
    "record",
    [
        _record("Encountered exception during execution: DatasetError('x')", DatasetError("x")),
        _record('Finished in state Failed("Task run encountered an exception DatasetError: x")'),
        _record('Finished in state Failed("Flow run encountered an exception: ResumeRefusedError: x")', level=logging.INFO),
        _record('Finished in state Failed("Flow run encountered an exception: NotBuiltError: x")'),
    ],
)
def test_user_errors_are_not_echoed(record):
    assert _no_console_echo_of_user_errors(record) is False


@pytest.mark.parametrize(
    "record",
    [
        _record("Encountered exception during execution: RuntimeError('boom')", RuntimeError("boom")),
        _record('Finished in state Failed("Flow run encountered an exception: RuntimeError: boom")'),
        _record("Finished in state Completed()", level=logging.INFO),
        _record("a DatasetError: mentioned in passing", level=logging.INFO),
    ],
)
def test_other_records_are_kept(record):
    assert _no_console_echo_of_user_errors(record) is True


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
