"""Prefect task for the dataset stage; all logic lives in anima_lora_flow.dataset."""

from __future__ import annotations

import logging

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.artifacts import create_markdown_artifact

from ..config import TrainingConfig
from ..core.dataset_report import DatasetError, DatasetReport
from ..runner.prepare import dataset_report
from ..ui.artifacts import artifact_key as shared_artifact_key


def artifact_key(project_name: str) -> str:
    return shared_artifact_key("dataset-report", project_name)


# No task retries: each download retries in its own library, once (an http(s) URL in dataset/fetch.py's
# resumable client, Drive in gdown, gs://, s3://, hf:// in their fsspec filesystems); retrying the task
# around them multiplied the tries (5 x 3 for a URL).
@task
def prepare_dataset_task(config: TrainingConfig) -> DatasetReport:
    """Fetch, extract and validate the dataset; publish the report as a markdown artifact."""
    try:
        report = dataset_report(config)
    except DatasetError as exc:
        if exc.report is not None:  # the artifact explains which files were skipped and why
            create_markdown_artifact(markdown=exc.report.to_markdown(), key=artifact_key(config.project_name))
        raise
    create_markdown_artifact(markdown=report.to_markdown(), key=artifact_key(config.project_name), description=report.summary())
    _tell_about(report, config.dataset)
    return report


def _tell_about(report: DatasetReport, source: str) -> None:
    """The summary on the console, and the skipped files as a warning: a dropped image must never go unnoticed."""
    try:
        logger = get_run_logger()
    except MissingContextError:  # the task body called as a plain function (tests, scripts)
        logger = logging.getLogger("anima_lora_flow.dataset")
    logger.info("dataset: %s", report.summary())
    if report.problems:
        shown = "; ".join(f"{issue.file}: {issue.reason}" for issue in report.problems[:3])
        more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        logger.warning(
            "%d file(s) of the dataset are not trained: %s%s; `anima-lora validate %s` lists them all",
            len(report.problems), shown, more, source,
        )
