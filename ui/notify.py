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
