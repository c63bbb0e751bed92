"""`anima-lora auto-resume`: a worker SIGKILLed mid-training leaves its run Running with no one to finish it;
the automations crash the silent run and put it back in its pool's queue, and a new worker resumes it.

The slow test is issue 19's "done when" for plain deployment runs (no `queue`): a local Prefect server
with its services (the triggers service evaluates automations), prefect.yaml deployed to a process pool
limited to one run, two demo projects submitted as deployment runs, the worker's process group and its
flow run's group SIGKILLed mid-training of the first, a new worker, and both LoRAs byte-identical to
uninterrupted `anima-lora train` runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from test_queue_worker_killed import POOL, _describe, _marked, _parent, _plans, _prefect, _sha, _start_worker, _stop

from anima_lora_flow.cli import main
from anima_lora_flow.errors import UserInputError
from anima_lora_flow.ui import notify

HEARTBEAT_S = 30  # Prefect's shortest; a silent run is crashed 3 heartbeats after its last one


def test_the_silent_run_watch_crashes_a_training_deployment_run_after_three_missed_heartbeats():
    from prefect.client.schemas.objects import StateType

    from anima_lora_flow.flows.train_lora import train_lora

    automation = notify.silent_run_automation(HEARTBEAT_S)
    trigger = automation.trigger
    assert trigger.posture == "Proactive" and trigger.within.total_seconds() == 3 * HEARTBEAT_S
    assert trigger.after == {"prefect.flow-run.heartbeat"} and trigger.expect == {"prefect.flow-run.*"}
    assert trigger.for_each == {"prefect.resource.id"}  # each run its own watch
    related = [spec.model_dump() for spec in trigger.match_related]
    assert {"prefect.resource.role": "flow", "prefect.resource.name": train_lora.name} in related
    assert {"prefect.resource.role": "deployment"} in related  # a run no worker can restart is not touched
    (action,) = automation.actions
    assert action.state == StateType.CRASHED and not action.force  # a run that already ended is left alone


def test_the_resume_automation_reschedules_a_crashed_run_of_the_pool_a_bounded_number_of_times():
    from prefect.client.schemas.objects import StateType

    automation = notify.resume_automation("gpus", resumes=2)
    trigger = automation.trigger
    assert trigger.posture == "Reactive" and trigger.expect == {"prefect.flow-run.Crashed"}
    assert trigger.match.model_dump()["prefect.run-count"] == ["1", "2"]  # not 0 (never ran) nor 3 (third start)
    related = [spec.model_dump() for spec in trigger.match_related]
    assert {"prefect.resource.role": "work-pool", "prefect.resource.name": "gpus"} in related
    (action,) = automation.actions
    assert action.state == StateType.SCHEDULED and action.name == "AwaitingRetry"


def test_auto_resume_twice_is_one_pair_of_automations_and_remove_deletes_them(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="auto-resume-pool", type="process"))
        except Exception:  # noqa: BLE001 - made by an earlier run of this test in the session
            pass
    for _ in range(2):
        notify.set_auto_resume("auto-resume-pool", resumes=2, heartbeat_s=HEARTBEAT_S)

    def names() -> list[str]:
        with get_client(sync_client=True) as client:
            return sorted(a.name for a in client.read_automations() if a.name.startswith("anima-lora: ")
                          and a.name != notify.AUTOMATION_NAME)

    assert names() == [notify.SILENT_AUTOMATION_NAME, notify.resume_automation_name("auto-resume-pool")]
    assert notify.remove_auto_resume("auto-resume-pool") == 2
    assert names() == []
    with pytest.raises(UserInputError, match="no work pool 'no-such-pool'"):
        notify.set_auto_resume("no-such-pool")


def test_auto_resume_without_a_lasting_server_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert main(["auto-resume", "--pool", "gpu-pool"]) == 2
    err = capsys.readouterr().err
    assert "anima-lora ui" in err and "PREFECT_API_URL" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "named"), [([], "--pool"), (["--pool", "p", "--resumes", "0"], "--resumes"),
                                             (["--pool", "p", "--heartbeat-seconds", "5"], "--heartbeat-seconds")])
def test_auto_resume_refuses_bad_options_before_reaching_a_server(args, named, capsys):
    assert main(["auto-resume", *args]) == 2
    assert named in capsys.readouterr().err


def test_a_rescheduled_run_gives_back_the_turn_its_dead_try_held(prefect_harness):
    """A crashed run put back in the queue runs again under the same flow run, whose label names the
    lease its dead try took: without giving it back, the run would wait for itself until the lease expired
    (for ever on a server without the lease service)."""
    import threading
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.flow_engine import run_flow
    from test_turns import takes_a_turn

    from anima_lora_flow.flows.turns import LEASE_S, ensure_turn_limit
    from anima_lora_flow.tasks.history import TURN_LEASE_LABEL

    project = f"rerun-{uuid.uuid4().hex[:8]}"
    name = ensure_turn_limit(project)
    with get_client(sync_client=True) as client:
        deployment_id = takes_a_turn.to_deployment(name=f"turns-{project}").apply()
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters={"project": project})
        # The dead first try: took the turn, labelled the run with it, and never renews or releases it.
        lease = client.increment_concurrency_slots_with_lease(
            [name], 1, "concurrency", LEASE_S, holder=ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id),
        ).json()["lease_id"]
        client.update_flow_run_labels(flow_run.id, {TURN_LEASE_LABEL: lease})
    results: list = []
    rerun = threading.Thread(target=lambda: results.append(run_flow(takes_a_turn, flow_run=flow_run,
                                                                    parameters={"project": project})), daemon=True)
    rerun.start()
    rerun.join(timeout=60)
    assert results == ["trained"]
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0


def _run_config(demo, tmp_path: Path, project: str, **changes) -> dict:
    settings = {
        "dataset": str(demo.dataset), "models_dir": str(demo.models_dir), "storage": str(tmp_path / "runs"),
        "work_dir": str(tmp_path / f"work-{project}"), "project_name": project, "network_dim": 4,
        "network_alpha": 4, "learning_rate": 1e-3, "max_train_epochs": 1, "repeats": 1, "resolution": 256,
        "lr_warmup_steps": 1, "optimizer": "adamw", "mixed_precision": "no", "gradient_checkpointing": False,
        "save_state_every_minutes": 0,
    }
    return settings | changes


@pytest.mark.slow
def test_a_killed_workers_runs_resume_on_a_new_worker_and_finish_as_uninterrupted_runs(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.core.processes import free_port
    from anima_lora_flow.demo import demo_config
    from anima_lora_flow.storage import RunStore, resolve_location
    from anima_lora_flow.ui import server as ui_server

    started = time.monotonic()
    home = tmp_path / "prefect-home"
    home.mkdir()
    saved_api_url = os.environ.get("PREFECT_API_URL")
    server = ui_server.start_ui_server(free_port(), home=home, timeout_s=180)  # full services: triggers included
    env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(home),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    first_worker = second_worker = None
    try:
        assert _prefect(["work-pool", "create", POOL, "--type", "process"], env).returncode == 0
        limited = _prefect(["work-pool", "set-concurrency-limit", POOL, "1"], env)
        assert limited.returncode == 0, limited.stdout + limited.stderr
        deployed = _prefect(["--no-prompt", "deploy", "--all"], env)
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        auto = [sys.executable, "-m", "anima_lora_flow.cli", "auto-resume", "--pool", POOL,
                "--heartbeat-seconds", str(HEARTBEAT_S)]
        for _ in range(2):  # the second replaces the first
            done = subprocess.run(auto, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout + done.stderr

        demo = demo_config(tmp_path / "demo")
        # The first saves a state every step and trains long enough to be killed in the middle.
        configs = {"resume-a": _run_config(demo, tmp_path, "resume-a", max_train_epochs=3, save_state_every_minutes=1e-5),
                   "resume-b": _run_config(demo, tmp_path, "resume-b", network_dim=2, network_alpha=2)}
        stores = {p: RunStore(resolve_location(str(tmp_path / "runs")), p) for p in configs}
        with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("train-anima-lora/train-anima-lora")
            run_ids = {p: client.create_flow_run_from_deployment(
                deployment.id, parameters={"config": TrainingConfig(**c).model_dump(mode="json")}).id
                for p, c in configs.items()}
        first_worker = _start_worker(env, tmp_path, "worker-1")

        store = stores["resume-a"]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if len(store.list_states()) >= 2 and store.checkpoint_name() not in store.list_checkpoints():
                break
            assert first_worker.poll() is None, (tmp_path / "worker-1.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the first run saved no state in time:\n" + (tmp_path / "worker-1.log").read_text()[-3000:])
        running = _marked("worker-1")
        flow_runs = [pid for pid in running if _parent(pid) == first_worker.pid]
        assert flow_runs, _describe(running)
        os.killpg(first_worker.pid, signal.SIGKILL)  # the machine dies: the worker and its flow run's group
        for pid in flow_runs:
            os.killpg(pid, signal.SIGKILL)
        first_worker.wait()
        killed = time.monotonic()
        while _marked("worker-1") and time.monotonic() - killed < 15:
            time.sleep(0.5)
        assert not _marked("worker-1"), _describe(_marked("worker-1"))
        saved = store.list_states()[-1].step

        # Nobody resubmits anything: the new worker only serves the pool.
        second_worker = _start_worker(env, tmp_path, "worker-2")
        with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 1200
            while time.monotonic() < deadline:
                runs = {p: client.read_flow_run(i) for p, i in run_ids.items()}
                if all(r.state.is_final() and r.state_name != "Crashed" for r in runs.values()):
                    break
                time.sleep(2)
            history = [s.name for s in client.read_flow_run_states(run_ids["resume-a"])]
        worker_log = (tmp_path / "worker-2.log").read_text()[-3000:]
        assert {p: r.state_name for p, r in runs.items()} == {"resume-a": "Completed", "resume-b": "Completed"}, \
            worker_log
        assert "Crashed" in history and "AwaitingRetry" in history, history
        assert runs["resume-a"].run_count == 2
        resumed_in_s = time.monotonic() - killed
        # The rerun resumed from the state its dead try saved.
        resumed = [p["start_step"] for p in _plans(tmp_path / "work-resume-a") if p.get("start_step")]
        assert resumed == [saved], _plans(tmp_path / "work-resume-a")

        # The same runs trained straight through by `anima-lora train`, each into storage of its own.
        for project, config in configs.items():
            straight_settings = config | {"storage": str(tmp_path / "straight"), "work_dir": str(tmp_path / f"straight-{project}")}
            config_file = tmp_path / f"{project}.toml"
            config_file.write_text(tomli_w.dumps(straight_settings))
            done = subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", "train", "--config", str(config_file)],
                                  env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            straight = RunStore(resolve_location(str(tmp_path / "straight")), project)
            final = f"checkpoints/{straight.checkpoint_name()}"
            assert _sha(Path(stores[project].path(final))) == _sha(Path(straight.path(final))), project
    finally:
        for worker in (first_worker, second_worker):
            if worker is not None:
                _stop(worker)
        for name in ("worker-1", "worker-2"):
            for pid in _marked(name):
                os.kill(pid, signal.SIGKILL)
        ui_server.stop_ui_server(home)
        if saved_api_url is None:
            os.environ.pop("PREFECT_API_URL", None)  # start_ui_server points this process at the server
        else:
            os.environ["PREFECT_API_URL"] = saved_api_url
    print(f"kill to both runs Completed: {resumed_in_s:.0f} s; the whole test: {time.monotonic() - started:.0f} s")
