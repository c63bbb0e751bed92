"""`anima-lora doctor`: what the flow detects here, and what it will do about each finding.

Exit codes: 0 when the storage is usable or none was given to check; 2 when the --storage given is
unusable (bad input, with train's own message). A missing or unusable GPU is marked `!!` but still
exits 0: it describes this machine rather than a mistake in the command, and doctor must be able to
run on a CPU machine to say so. So does a PREFECT_API_URL that does not answer (train refuses it).

Doctor only looks: a storage folder that does not exist is reported, not created.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserInputError, render, setting
from .detect import detect_platform

SECRET_NAMES = ("HF_TOKEN", "PREFECT_API_KEY")
EXIT_OK = 0
EXIT_BAD_STORAGE = 2  # the project's exit code for bad input


@dataclass
class Finding:
    topic: str
    found: str
    action: str
    ok: bool = True


def check_torch() -> list[Finding]:
    import torch  # noqa: PLC0415

    build = f"PyTorch {torch.__version__}" + (f", CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU build")
    return [Finding("pytorch", build, "used as installed")]


def check_gpu(platform) -> Finding:
    gpu = platform.gpu
    if gpu is None:
        return Finding(
            "gpu", "no GPU visible",
            "training real models needs one; on Colab: Runtime > Change runtime type > T4 GPU (the demo runs on CPU)",
            ok=False,
        )
    if not gpu.usable:
        return Finding(
            "gpu", f"{gpu.name} ({gpu.sm}) has no kernels in this PyTorch build",
            "the plan stops before any download; on Kaggle pick 'GPU T4 x2' instead of P100", ok=False,
        )
    precision = "bf16" if gpu.bf16_native else "fp16 (bf16 would be emulated and slow here)"
    count = f"{gpu.count}x " if gpu.count > 1 else ""
    action = f"mixed precision auto -> {precision}"
    if gpu.count > 1:
        action += render(f"; one GPU unless you pass {setting('num_gpus', gpu.count)} (data parallel, {gpu.count}x fewer steps per epoch)")
    return Finding("gpu", f"{count}{gpu.name}, {gpu.memory_gib:.1f} GiB", action)


def check_storage(location: str) -> Finding:
    """Can train keep its run in `location`? train's own checks (resolve_storage), then a real write into
    an existing folder. Doctor only looks: a missing folder is reported, never created."""
    from ..storage import resolve_storage  # noqa: PLC0415
    from ..storage.location import unreachable_message  # noqa: PLC0415

    try:
        loc = resolve_storage(location, create=False)  # for a local path: the folder or its nearest parent is writable
    except UserInputError as exc:  # a file, memory://, Drive off Colab, an unknown scheme, an unreachable host
        return Finding("storage", str(exc), render(f"train stops with this same message; fix it or pass another {setting('storage')}"),
                       ok=False)
    try:
        if not loc.fs.exists(loc.root):
            return Finding("storage", f"{location}: does not exist; train would create it{_parent_note(loc)}",
                           "checkpoints and states are published here")
        probe = loc.join(f".anima-doctor-{uuid.uuid4().hex[:8]}")
        loc.fs.pipe_file(probe, b"ok")
        loc.fs.rm(probe)
    except Exception as exc:  # noqa: BLE001 - every backend's failure is a finding, not a crash
        why = unreachable_message(location, exc) or (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        )
        return Finding("storage", f"{location}: not writable ({why})",
                       render(f"train would stop before it starts; fix its access rights or pass another {setting('storage')}"),
                       ok=False)
    return Finding("storage", f"{location}: writable{_free_space(loc.root) if loc.is_local else ''}",
                   "checkpoints and states are published here")


def _parent_note(loc) -> str:
    """For a local folder still to be created: which existing parent it would go in (writable, as checked)."""
    if not loc.is_local:
        return " (write access is checked when it first writes)"
    parent = next(p for p in Path(loc.root).parents if p.exists())
    return f" under {parent}, which is writable{_free_space(parent)}"


def _free_space(path) -> str:
    return f", {shutil.disk_usage(path).free / 2**30:.1f} GiB free"


def check_prefect() -> Finding:
    """Which Prefect API runs report to (the user's own, `anima-lora ui`'s, or a temporary one), and where
    their history is kept and how to open it. Read without importing prefect or starting anything."""
    from .prefect_env import (  # noqa: PLC0415
        History,
        api_problem,
        configure_prefect_environment,
        configured_api,
        running_ui_history,
        user_history,
    )

    home = configure_prefect_environment()["PREFECT_HOME"]
    api = configured_api()
    if api is None:
        running = running_ui_history(Path(home))
        if running is not None:
            return Finding("prefect", f"no PREFECT_API_URL; `anima-lora ui` is running at {running.ui_url}",
                           "runs report to it; " + running.describe())
        return Finding("prefect", f"no PREFECT_API_URL: each run starts a temporary local server (PREFECT_HOME {home})",
                       History(ui_url=None, home=Path(home)).describe() + "; Prefect Cloud keeps it across sessions")
    origin = "" if api.source == "PREFECT_API_URL" else f" (from {api.source})"
    problem = api_problem(api.url, api.key)
    if problem:
        return Finding("prefect", f"API at {api.where}{origin}: {problem}",
                       "train stops before it starts; start that server (`anima-lora ui`), correct PREFECT_API_URL, "
                       "or unset it to use a temporary local server", ok=False)
    return Finding("prefect", f"API at {api.where}{origin}", user_history(api).describe())


def check_secrets(env=os.environ) -> Finding:
    found = [name for name in SECRET_NAMES if env.get(name)]
    return Finding("secrets", ", ".join(found) if found else "none in the environment",
                   "values are never printed or stored in parameters")


def collect(storage: str | None = None) -> tuple[object, list[Finding]]:
    platform = detect_platform()
    findings = [Finding("platform", platform.describe(), "session deadline used by the plan and the guard")]
    findings += check_torch()
    findings.append(check_gpu(platform))
    if storage:
        findings.append(check_storage(storage))
    findings.append(check_prefect())
    findings.append(check_secrets())
    return platform, findings


def run_doctor(args) -> int:
    """Print the findings; return 2 when the --storage given is unusable, else 0 (see the module docstring)."""
    _, findings = collect(getattr(args, "storage", None))
    if getattr(args, "json", False):
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            mark = "ok " if f.ok else "!! "
            print(f"{mark}{f.topic:9} {f.found}\n             -> {f.action}")
    return EXIT_BAD_STORAGE if any(f.topic == "storage" and not f.ok for f in findings) else EXIT_OK
