"""`anima-lora notify`: a Prefect automation that calls a webhook when a training run fails or crashes.

The automation lives on the Prefect server, so it must be one that keeps running and runs the
triggers and actions services: Prefect Cloud, a user's own server (PREFECT_API_URL), or the
`anima-lora ui` server. A per-command server is gone when the command ends and runs no services.
The webhook is a Prefect Webhook block (the URL is stored as a secret) called by a CallWebhook action.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ..errors import UserInputError, setting

FLOW_NAME = "train-anima-lora"  # the name in flows/train_lora.py's @flow
AUTOMATION_NAME = "anima-lora: a training run failed or crashed"
BLOCK_NAME = "anima-lora-failure-webhook"
# TimedOut is a Failed state with its own name, and so its own event.
FAILURE_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut")

# A JSON body: `text` is what Slack-style incoming webhooks show; the rest is for programs. tojson
# quotes whatever a state message holds; `or none` turns a missing value into null (tojson refuses
# Jinja's undefined).
PAYLOAD = """{
  "text": {{ ("Anima LoRA run " ~ flow_run.name ~ " (project " ~ (flow_run.parameters.config.project_name or "?")
              ~ ") ended " ~ flow_run.state.name ~ ": " ~ (flow_run.state.message or "no message")) | tojson }},
  "flow_run_id": "{{ flow_run.id }}",
  "flow_run_name": {{ flow_run.name | tojson }},
  "project": {{ (flow_run.parameters.config.project_name or none) | tojson }},
  "state": {{ flow_run.state.name | tojson }},
  "message": {{ (flow_run.state.message or none) | tojson }},
  "url": {{ ((flow_run | ui_url) or none) | tojson }}
}"""


def check_webhook_url(url: str) -> str:
    """The URL as given, or UserInputError when it is not an http(s) URL with a host."""
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserInputError(
            f"{setting('webhook', repr(url))} is not an http(s) URL; pass the full address, "
            "e.g. https://hooks.slack.com/services/...",
            field="webhook",
        )
    return url.strip()


def connect_to_lasting_api(needs: str = "notifications need") -> str:
    """Point Prefect at a server that outlives this command and answers; returns its API URL.

    Must run before `import prefect` in this process: prefect reads PREFECT_API_URL when imported.

    Raises:
        UserInputError: no such server is configured, or the configured one does not answer.
    """
    from ..platforms.prefect_env import api_problem, configure_prefect_environment
    from .server import _client_host, _running_server, prefect_home

    configure_prefect_environment()
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        running = _running_server(prefect_home())
        if running is not None:
            url = f"http://{_client_host(running.get('host', '127.0.0.1'))}:{running['port']}/api"
            os.environ["PREFECT_API_URL"] = url
    if not url:
        raise UserInputError(
            f"{needs} a Prefect server that keeps running: start one with `anima-lora ui` "
            "(train runs then use it), or set PREFECT_API_URL to your server or Prefect Cloud (with PREFECT_API_KEY)"
        )
    problem = api_problem(url, os.environ.get("PREFECT_API_KEY"))
    if problem:
        raise UserInputError(
            f"PREFECT_API_URL {url}: {problem}; start that server (`anima-lora ui`) or correct PREFECT_API_URL"
        )
    return url


def failure_automation(block_id):
    """The automation: any failed, crashed or timed-out run of the training flow calls the webhook block."""
    from prefect.automations import AutomationCore, CallWebhook, EventTrigger, Posture

    return AutomationCore(
        name=AUTOMATION_NAME,
        description="Created by `anima-lora notify`; remove it with `anima-lora notify --remove`.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
            expect=set(FAILURE_EVENTS),
            for_each={"prefect.resource.id"},  # each run is its own case: two failures, two calls
            posture=Posture.Reactive,
            threshold=1,
            within=0,
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=PAYLOAD)],
    )


def set_failure_webhook(url: str) -> str:
    """Create or replace the webhook block and the automation; returns the automation's id."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    block_id = Webhook(url=url, method="POST", headers={"Content-Type": "application/json"}).save(
        BLOCK_NAME, overwrite=True, _sync=True,
    )
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(old.id)
        return str(client.create_automation(failure_automation(block_id)))


def remove_failure_webhook() -> bool:
    """Delete the automation and its webhook block; False when there was neither."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    removed = False
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(old.id)
            removed = True
        try:
            block = client.read_block_document_by_name(BLOCK_NAME, block_type_slug="webhook")
        except ObjectNotFound:
            return removed
        client.delete_block_document(block.id)
    return True


def run_notify(args) -> int:
    """The `anima-lora notify --webhook URL | --remove` command."""
    url = check_webhook_url(args.webhook) if args.webhook else None
    api = connect_to_lasting_api()
    if args.remove:
        removed = remove_failure_webhook()
        print(f"removed the failure notification from {api}" if removed else f"no failure notification was set up on {api}")
        return 0
    automation_id = set_failure_webhook(url)
    host = urlparse(url).netloc
    print(f"a failed, crashed or timed-out run of {FLOW_NAME} now POSTs a JSON message to {host} "
          f"(automation {automation_id} on {api}); remove it with `anima-lora notify --remove`")
    return 0


# `anima-lora auto-resume`: a deployment run whose process died (SIGKILL, OOM, a machine lost) sends no
# state change and stays Running for ever, holding its pool's slot. Two automations bring it back: one
# marks a run Crashed when its heartbeats stop, the other puts a crashed run of the pool back to
# Scheduled, where the next free worker picks it up and the flow resumes from its storage.
SILENT_AUTOMATION_NAME = "anima-lora: a deployment run whose heartbeats stopped is crashed"
RESUME_AUTOMATION_PREFIX = "anima-lora: resume crashed runs of work pool "
DEFAULT_HEARTBEAT_S = 180  # Prefect 3.9's default PREFECT_FLOWS_HEARTBEAT_FREQUENCY
MIN_HEARTBEAT_S = 30  # Prefect refuses a shorter heartbeat
# A heartbeat is one event on a loaded server; missing three in a row is a dead process, not a late one.
MISSED_HEARTBEATS = 3
DEFAULT_RESUMES = 3


def resume_automation_name(pool: str) -> str:
    return RESUME_AUTOMATION_PREFIX + pool


def silent_run_automation(heartbeat_s: int = DEFAULT_HEARTBEAT_S):
    """After a heartbeat of a training deployment run, expect another event of that run (a heartbeat or
    a state change) within MISSED_HEARTBEATS heartbeats, or mark the run Crashed. A finished run's
    own Completed/Failed event closes its watch; marking a run that already ended is refused by the server."""
    from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType

    within = heartbeat_s * MISSED_HEARTBEATS
    return AutomationCore(
        name=SILENT_AUTOMATION_NAME,
        description=f"Created by `anima-lora auto-resume` for workers sending a heartbeat every {heartbeat_s} s; "
                    "remove it with `anima-lora auto-resume --remove`.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            # Heartbeats carry the flow and the deployment, not the pool: a run outside a deployment has no
            # worker to run it again, so it is left to the CLI's own stale-run closer.
            match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
                           {"prefect.resource.role": "deployment"}],
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {within} s: its process or machine died")],
    )


def resume_automation(pool: str, resumes: int = DEFAULT_RESUMES):
    """A training run of `pool` that crashed goes back to Scheduled (AwaitingRetry), at most `resumes`
    times: the state event carries the run's run count (how many times it entered Running), and only
    counts 1..resumes match, so the run that crashes on its (resumes+1)-th start stays Crashed. A run
    that crashed before it ever ran (count 0: its infrastructure failed) is left alone, as rerunning
    it would most likely fail the same way for ever."""
    from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType

    return AutomationCore(
        name=resume_automation_name(pool),
        description=f"Created by `anima-lora auto-resume`; puts a crashed training run back in the queue of "
                    f"work pool {pool} (at most {resumes} times); remove it with `anima-lora auto-resume --remove`.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*",
                   "prefect.run-count": [str(n) for n in range(1, resumes + 1)]},
            match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
                           {"prefect.resource.role": "work-pool", "prefect.resource.name": pool}],
            expect={"prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=0,
        ),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name="AwaitingRetry",
                                    message="crashed; put back in the pool's queue by `anima-lora auto-resume` "
                                            "to resume from its storage")],
    )


def check_auto_resume_options(resumes: int, heartbeat_s: int) -> None:
    if resumes < 1:
        raise UserInputError(f"{setting('resumes', resumes)} must be at least 1 (or remove auto-resume)",
                             field="resumes")
    if heartbeat_s < MIN_HEARTBEAT_S:
        raise UserInputError(f"{setting('heartbeat_seconds', heartbeat_s)} must be at least {MIN_HEARTBEAT_S}: "
                             "Prefect sends no more often; give the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
                             field="heartbeat_seconds")


def set_auto_resume(pool: str, resumes: int = DEFAULT_RESUMES, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> list[str]:
    """Create or replace both automations for `pool`; returns their ids (silent-run watch first).

    Raises:
        UserInputError: the server has no work pool `pool`.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise UserInputError(f"the Prefect server has no work pool {pool!r}; create it first "
                                 f"(`prefect work-pool create {pool} --type process`) or name an existing one",
                                 field="pool") from None
        ids = []
        for automation in (silent_run_automation(heartbeat_s), resume_automation(pool, resumes)):
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            ids.append(str(client.create_automation(automation)))
    return ids


def remove_auto_resume(pool: str | None) -> int:
    """Delete the resume automation of `pool` (of every pool when None), and the silent-run watch once no
    pool's resume automation is left; returns how many automations were deleted."""
    from prefect.client.orchestration import get_client

    removed = 0
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if (automation.name == resume_automation_name(pool) if pool
                    else automation.name.startswith(RESUME_AUTOMATION_PREFIX)):
                client.delete_automation(automation.id)
                removed += 1
        if not any(a.name.startswith(RESUME_AUTOMATION_PREFIX) for a in client.read_automations()):
            for old in client.read_automations_by_name(SILENT_AUTOMATION_NAME):
                client.delete_automation(old.id)
                removed += 1
    return removed


def run_auto_resume(args) -> int:
    """The `anima-lora auto-resume --pool NAME [--resumes N] [--heartbeat-seconds S] | --remove` command."""
    if not args.remove:
        if not args.pool:
            raise UserInputError(f"name the work pool whose crashed runs should resume: {setting('pool', 'NAME')}",
                                 field="pool")
        check_auto_resume_options(args.resumes, args.heartbeat_seconds)
    api = connect_to_lasting_api("auto-resume needs")
    if args.remove:
        removed = remove_auto_resume(args.pool)
        print(f"removed {removed} auto-resume automation(s) from {api}" if removed
              else f"no auto-resume was set up on {api}")
        return 0
    silent_id, resume_id = set_auto_resume(args.pool, args.resumes, args.heartbeat_seconds)
    within = args.heartbeat_seconds * MISSED_HEARTBEATS
    print(f"a run of {FLOW_NAME} in work pool {args.pool} that sends no heartbeat for {within} s is marked Crashed "
          f"(automation {silent_id}) and put back in the pool's queue, at most {args.resumes} times "
          f"(automation {resume_id}), on {api}; the next free worker resumes it from its storage. Workers must send "
          f"heartbeats every {args.heartbeat_seconds} s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY={args.heartbeat_seconds}, "
          f"Prefect's default is {DEFAULT_HEARTBEAT_S}). Remove with `anima-lora auto-resume --remove`")
    return 0
