"""Plan the run before any download; stop here when it cannot finish and the user chose to stop."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from ..config import TrainingConfig
from ..planner.plan import Plan, enforce_plan
from ..platforms.detect import detect_platform
from ..runner.prepare import plan_run
from ..ui.artifacts import artifact_key


@task(name="plan")  # no retries: nothing here is transient
def plan_task(config: TrainingConfig, report, steps_done: int = 0) -> Plan:
    """Detect the platform, plan from `steps_done` on, publish the plan as an artifact, then enforce its decision."""
    plan = plan_run(config, report, steps_done, detect_platform(session_budget_hours=config.session_budget_hours))
    create_markdown_artifact(key=artifact_key("plan", config.project_name), markdown=plan.to_markdown(), description="Training plan")
    enforce_plan(plan)
    return plan
