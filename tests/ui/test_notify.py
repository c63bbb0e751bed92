"""`anima-lora notify`: a failed or crashed training run calls the user's webhook, through a Prefect automation.

The end-to-end test starts the `anima-lora ui` server (full services: triggers and actions), a local
webhook receiver, the CLI and failing flow runs, all as real processes.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anima_lora_flow.cli import main
from anima_lora_flow.core.processes import free_port
from anima_lora_flow.ui import notify
from anima_lora_flow.ui import server as ui_server

WAIT_S = 90  # events -> trigger -> action on a loaded 2-core box; a healthy server takes a few seconds


@pytest.fixture
def webhook_receiver():
    """A local HTTP server; yields (url, queue of (path, JSON body)) for each POST it gets."""
    received: queue.Queue = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.put((self.path, self.headers.get("Content-Type"), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    httpd.shutdown()
    httpd.server_close()


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", *args], env=env, capture_output=True,
                          text=True, timeout=180)


# Three runs against the server: another flow that fails (no call), the real training flow failing on a
# dataset that does not exist, and a run of the training flow crashed by SIGTERM.
FAILING_RUNS = textwrap.dedent("""
    import json, os, signal, sys
    from prefect import flow
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.flows.train_lora import train_lora

    tmp = sys.argv[1]

    @flow(name="some-other-flow")
    def other():
        raise RuntimeError("not a training run")

    @flow(name=train_lora.name)
    def terminated(config: dict):
        os.kill(os.getpid(), signal.SIGTERM)

    ids = {}
    ids["other"] = str(other(return_state=True).state_details.flow_run_id)
    config = TrainingConfig(dataset=os.path.join(tmp, "no-such-dataset"), storage=os.path.join(tmp, "runs"),
                            work_dir=os.path.join(tmp, "work"), project_name="notify_me")
    ids["failed"] = str(train_lora(config=config, return_state=True).state_details.flow_run_id)
    print(json.dumps(ids), flush=True)
    terminated(config={"project_name": "crash_me"})
""")


@pytest.mark.slow
def test_a_failed_or_crashed_run_calls_the_webhook(tmp_path, webhook_receiver):
    # About 70 s (a fresh server's migrations dominate): deselected unless `-m slow` (pyproject addopts).
    url, received = webhook_receiver
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING")
    saved_api_url = os.environ.get("PREFECT_API_URL")
    server = ui_server.start_ui_server(free_port(), home=home, timeout_s=180)  # what `anima-lora ui` starts
    try:
        # notify finds the `ui` server by its pid file, as on a user's machine.
        done = cli("notify", "--webhook", url, env=env)
        assert done.returncode == 0, done.stderr
        assert "notify --remove" in done.stdout
        again = cli("notify", "--webhook", url, env=env)  # replaces, never duplicates
        assert again.returncode == 0, again.stderr

        runs = subprocess.run([sys.executable, "-c", FAILING_RUNS, str(tmp_path)], capture_output=True, text=True,
                              env={**env, "PREFECT_API_URL": server.api_url}, timeout=300)
        ids = json.loads(runs.stdout.strip().splitlines()[0])

        calls = []
        deadline = time.monotonic() + WAIT_S
        while len(calls) < 2 and time.monotonic() < deadline:
            try:
                calls.append(received.get(timeout=1))
            except queue.Empty:
                pass
        time.sleep(2)  # a duplicate or a call for the other flow would arrive by now
        while not received.empty():
            calls.append(received.get())

        assert len(calls) == 2, f"webhook calls within {WAIT_S} s: {calls}\nrun output: {runs.stderr[-2000:]}"
        by_state = {body["state"]: body for _path, _type, body in calls}
        assert set(by_state) == {"Failed", "Crashed"}
        assert all(path == "/hook" and kind == "application/json" for path, kind, _body in calls)
        failed = by_state["Failed"]
        assert failed["flow_run_id"] == ids["failed"] and failed["project"] == "notify_me"
        assert "notify_me" in failed["text"] and "Failed" in failed["text"] and failed["message"]
        assert by_state["Crashed"]["project"] == "crash_me"
        assert ids["other"] not in {body["flow_run_id"] for _p, _t, body in calls}

        removed = cli("notify", "--remove", env=env)
        assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
        assert "no failure notification" in cli("notify", "--remove", env=env).stdout
    finally:
        ui_server.stop_ui_server(home)
        if saved_api_url is None:
            os.environ.pop("PREFECT_API_URL", None)  # start_ui_server points this process at the server
        else:
            os.environ["PREFECT_API_URL"] = saved_api_url


def test_the_automation_watches_the_training_flow():
    from anima_lora_flow.flows.train_lora import train_lora

    automation = notify.failure_automation("00000000-0000-0000-0000-000000000000")
    assert notify.FLOW_NAME == train_lora.name
    trigger = automation.trigger.model_dump(mode="json")
    assert trigger["match_related"] == {"prefect.resource.role": "flow", "prefect.resource.name": train_lora.name}
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"} <= automation.trigger.expect


def test_notify_without_a_lasting_server_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))  # no `anima-lora ui` server recorded here
    assert main(["notify", "--webhook", "https://example.invalid/hook"]) == 2
    err = capsys.readouterr().err
    assert "anima-lora ui" in err and "PREFECT_API_URL" in err and len(err.strip().splitlines()) == 1


def test_notify_refuses_a_server_that_does_not_answer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    assert main(["notify", "--remove"]) == 2
    assert "PREFECT_API_URL" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["hooks.slack.com/x", "ftp://host/x", "https://"])
def test_notify_refuses_a_webhook_that_is_not_an_http_url(bad, capsys):
    assert main(["notify", "--webhook", bad]) == 2
    assert "--webhook" in capsys.readouterr().err


def test_notify_needs_webhook_or_remove(capsys):
    assert main(["notify"]) == 2
    assert "--webhook" in capsys.readouterr().err
