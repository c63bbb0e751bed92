"""`anima-lora serve`: this machine runs the training flow for runs started from the Prefect UI's form.

The flow is served (a Prefect Runner: no work pool, no worker) as the deployment
`train-anima-lora/<name>` while the command runs. One run at a time per GPU: with one GPU (or none)
one runner takes one run at a time; with several, one runner process per GPU, each seeing only its
own GPU (CUDA_VISIBLE_DEVICES), so two runs never share a device. Runs started beyond that wait
in the deployment's queue (Scheduled) until a GPU is free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from ..core.gpu import query_torch_gpu
from ..core.processes import guard_group, signal_group


def default_name() -> str:
    """`serve-<host>`: a user with several machines sees in the UI which one a deployment runs on."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname()) or "host"
    return f"serve-{host}"


def gpu_slots(info=None) -> int:
    """How many runs this machine takes at once: its usable GPUs, or one without a GPU (CPU training)."""
    return info.count if info is not None and info.usable else 1


def per_gpu_environments(count: int, env: dict[str, str]) -> list[dict[str, str]]:
    """One environment per GPU runner, each showing it one device (of those the user already made visible)."""
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = visible[:count] if len(visible) >= count else [str(i) for i in range(count)]
    return [{**env, "CUDA_VISIBLE_DEVICES": device} for device in devices]


def serve_here(name: str) -> None:
    """Serve the flow from this process, one run at a time, until interrupted."""
    from prefect import serve  # noqa: PLC0415 - prefect after the API URL is set
    from prefect.deployments.runner import EntrypointType  # noqa: PLC0415

    from .train_lora import train_lora  # noqa: PLC0415

    # A deployment (not `train_lora.serve`): the runner then starts each run as a worker does, importing
    # the installed flow's module afresh rather than unpickling the flow object this process holds.
    # (`train_lora.serve()` works too, for a notebook; tests/flows/test_served_flow_object.py.)
    deployment = train_lora.to_deployment(
        name=name, entrypoint_type=EntrypointType.MODULE_PATH, tags=["anima", "lora", "served"],
        description="Train one Anima LoRA on the machine running `anima-lora serve`.",
    )
    # pause_on_shutdown=False: with several runners serving one deployment, the first to stop must not
    # pause it for the others; runs started while nothing serves simply wait (Scheduled, then Late).
    serve(deployment, limit=1, pause_on_shutdown=False)


def serve_per_gpu(name: str, count: int) -> int:
    """One runner process per GPU; returns when they have all ended (Ctrl-C or SIGTERM ends them).

    Each runner leads its own session with a watchdog (core/processes.guard_group), so a `serve`
    killed outright (SIGKILL) does not leave runners taking runs with nobody to stop them."""
    children = []
    for env in per_gpu_environments(count, dict(os.environ)):
        child = subprocess.Popen([sys.executable, "-m", __name__, name], env=env, start_new_session=True)
        guard_group(child)
        children.append(child)
    # SIGTERM only raises here: stopping inside the handler would wait on a child while the interrupted
    # Popen.wait holds that child's lock, a deadlock.
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        return max(child.wait() for child in children)
    except (KeyboardInterrupt, _StopServing):  # in their own sessions the runners got no Ctrl-C: pass it on
        _stop(children)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stopping short
        _stop(children)
        signal.signal(signal.SIGTERM, previous)


class _StopServing(Exception):
    """SIGTERM reached `serve`: stop the runners as a Ctrl-C does."""


def _raise_stop(*_) -> None:
    raise _StopServing


def _stop(children: list[subprocess.Popen], grace_s: float = 30) -> None:
    """Ctrl-C to each runner (a runner's own way to stop), then SIGKILL to its group after `grace_s`."""
    for child in children:
        if child.poll() is None:
            signal_group(child, signal.SIGINT)
    for child in children:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_group(child, signal.SIGKILL)
            child.wait()


def run_serve(args) -> int:
    """`anima-lora serve`: needs a Prefect server that outlives it, where the deployment and its runs live."""
    from ..ui.notify import connect_to_lasting_api  # noqa: PLC0415

    api = connect_to_lasting_api("`anima-lora serve` needs")
    name = args.name or default_name()
    gpu = query_torch_gpu()
    slots = gpu_slots(gpu)
    print(f"serving train-anima-lora/{name} on {api}: {slots} run{'s' if slots > 1 else ''} at a time "
          f"({'one per GPU' if slots > 1 else 'one GPU' if gpu else 'no GPU: CPU'}); start runs from "
          "the UI's deployment page (Run > Custom run) and stop serving with Ctrl-C", flush=True)
    if slots <= 1:
        serve_here(name)
        return 0
    return serve_per_gpu(name, slots)


if __name__ == "__main__":  # one GPU's runner, started by serve_per_gpu
    serve_here(sys.argv[1])
