"""`anima-lora doctor`: what the flow detects here, and what it will do about each finding.

Exit codes: 0 when the storage is usable or none was given to check; 2 when the --storage given is
unusable (bad input, with train's own message). A missing or unusable GPU is marked `!!` but still
exits 0: it describes this machine rather than a mistake in the command, and doctor must be able to
run on a CPU machine to say so.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass

from ..errors import UserInputError
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
        action += f"; one GPU unless you pass --num-gpus {gpu.count} (data parallel, {gpu.count}x fewer steps per epoch)"
    return Finding("gpu", f"{count}{gpu.name}, {gpu.memory_gib:.1f} GiB", action)


def check_storage(location: str) -> Finding:
    """Can train keep its run in `location`? The same checks as train (resolve_storage), then a real write."""
    from ..storage import resolve_storage  # noqa: PLC0415
    from ..storage.location import unreachable_message  # noqa: PLC0415

    try:
        loc = resolve_storage(location)
    except UserInputError as exc:  # a file, memory://, Drive off Colab, an unknown scheme, an unreachable host
        return Finding("storage", str(exc), "train stops with this same message; fix it or pass another --storage", ok=False)
    try:
        probe = loc.join(f".anima-doctor-{uuid.uuid4().hex[:8]}")
        loc.fs.makedirs(loc.root, exist_ok=True)
        loc.fs.pipe_file(probe, b"ok")
        loc.fs.rm(probe)
    except Exception as exc:  # noqa: BLE001 - every backend's failure is a finding, not a crash
        why = unreachable_message(location, exc) or (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        )
        return Finding("storage", f"{location}: not writable ({why})",
                       "train would stop before it starts; fix its access rights or pass another --storage", ok=False)
    free = ""
    if loc.is_local:
        usage = shutil.disk_usage(loc.root)
        free = f", {usage.free / 2**30:.1f} GiB free"
    return Finding("storage", f"{location}: writable{free}", "checkpoints and states are published here")


def check_prefect() -> Finding:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return Finding("prefect", "no PREFECT_API_URL", "a temporary local server starts with each run (no UI); "
                       "`anima-lora ui` for a UI, Prefect Cloud to keep history across sessions")
    where = "Prefect Cloud" if "api.prefect.cloud" in url else url
    return Finding("prefect", f"API at {where}", "flow runs and artifacts are recorded there")


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
