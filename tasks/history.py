"""Prefect run history: runs of this project left "Running" by a machine that died are marked Crashed.

A SIGKILLed process (VM recycled, OOM killer) never reports its end, so its run stays Running forever
(prefect.md §4). Each run records `<host>:<pid>` as its infrastructure pid; at the next start, a
Running run whose process is gone, or whose host is another (an earlier Colab/Kaggle VM), is closed.
"""

from __future__ import annotations

import os
import socket

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run
from prefect.states import Crashed

FLOW_NAME = "train-anima-lora"


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_stale(infrastructure_pid: str | None, *, me: str) -> str | None:
    """Why a Running run's process is gone, or None when it may still be alive."""
    if not infrastructure_pid or ":" not in infrastructure_pid:
        return None
    host, _, pid = infrastructure_pid.rpartition(":")
    my_host = me.rpartition(":")[0]
    if host != my_host:
        return f"its machine {host} is gone (this session runs on {my_host})"
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return f"its process {pid} on this machine no longer exists"
    except PermissionError:
        return None
    return None


@task(name="close-stale-runs")
def mark_stale_runs_crashed_task(project_name: str) -> list[str]:
    """Mark this project's dead Running runs Crashed and tag the current run with its host and pid."""
    logger = get_run_logger()
    me = this_process()
    current = flow_run.get_id()
    closed = []
    with get_client(sync_client=True) as client:
        if current:
            client.update_flow_run(current, infrastructure_pid=me)
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))),
        )
        for run in runs:
            if str(run.id) == str(current):
                continue
            if (run.parameters.get("config") or {}).get("project_name") != project_name:
                continue
            reason = is_stale(run.infrastructure_pid, me=me)
            if reason:
                client.set_flow_run_state(run.id, Crashed(message=f"run never finished: {reason}"), force=True)
                logger.info("marked earlier run %s Crashed: %s", run.name, reason)
                closed.append(str(run.id))
    return closed
