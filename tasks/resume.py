"""Judge the newest saved state before any download: a run that would be refused stops here."""

from __future__ import annotations

from prefect import get_run_logger, task

from ..config import TrainingConfig
from ..runner.resume import ResumePoint, judge_resume
from .retry import retry_unless_user_error
from ..storage.runstore import StoreRef
from .storage import run_store


@task(name="check-resume", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_unless_user_error)
def check_resume_task(config: TrainingConfig, report, storage: StoreRef | None = None) -> ResumePoint:
    """Where this run starts, from the newest state's manifest alone; ResumeRefusedError when it cannot
    be continued with this config. The training task downloads that state later."""
    point = judge_resume(run_store(config, storage), config, report.fingerprint)
    logger = get_run_logger()
    for change in point.changes:
        logger.warning("changed since the saved state: %s", change)
    return point
