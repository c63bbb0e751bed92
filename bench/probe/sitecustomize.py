"""Rehearsal probe (bench/rehearse.py puts this folder on PYTHONPATH): memory and time per stage, observed only.

Active only where $ANIMA_REHEARSAL_PROBE names a JSON-lines file; every process of the run (the CLI,
the flow, the trainer) appends its records there. Nothing it wraps changes behaviour:

- the trainer's event sink: at every event the process's resident memory and its peak since the
  previous event (Linux VmHWM, reset after each read via /proc/self/clear_refs), so each stage between
  two events gets its own peak; at the first step, the torch modules alive in the process;
- the models stage: download, hash check and conversion calls, timed, with their own peak; the
  trainer's cache and transformer-load calls likewise;
- with $ANIMA_REHEARSAL_PINS, the registry's SHA-256 pins replaced by the generated files' hashes.
"""

import os

_PROBE = os.environ.get("ANIMA_REHEARSAL_PROBE")


def _status() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _record(kind: str, **data) -> None:
    import json
    import sys
    import time

    data.update(kind=kind, pid=os.getpid(), time=time.time(), argv=" ".join(sys.argv[:3])[:200])
    with open(_PROBE, "a") as fh:
        fh.write(json.dumps(data, default=str) + "\n")


def _resident_modules() -> list:
    """Top-level torch modules alive in this process, with their parameter count and bytes."""
    import gc
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return []
    modules = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)]
    children = {id(c) for m in modules for c in m.children()}
    roots = []
    for m in modules:
        if id(m) in children:
            continue
        params = list(m.parameters())
        if not params:
            continue
        roots.append({
            "class": type(m).__name__,
            "parameters": sum(p.numel() for p in params),
            "bytes": sum(p.numel() * p.element_size() for p in params),
            "dtype": str(params[0].dtype), "device": str(params[0].device),
        })
    return sorted(roots, key=lambda r: -r["bytes"])


def _wrap_sink(module) -> None:
    original = module.JsonLinesSink.__call__
    seen = {"steps": 0}

    def __call__(self, event):
        status = _status()
        extra = {}
        if event.event == "step":
            seen["steps"] += 1
            if seen["steps"] == 1:
                extra["resident"] = _resident_modules()
        message = event.data.get("message") if event.event == "log" else None
        _record("event", event=event.event, message=message, step=event.data.get("step"),
                rss=status.get("VmRSS"), peak=status.get("VmHWM"), **extra)
        _reset_peak()
        return original(self, event)

    module.JsonLinesSink.__call__ = __call__


def _timed(module, name: str, stage: str) -> None:
    import functools
    import time

    original = getattr(module, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        _reset_peak()
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            status = _status()
            what = args[2].filename if stage == "download" else str(args[0]) if args else None
            _record("stage", stage=stage, seconds=time.time() - started, peak=status.get("VmHWM"),
                    rss=status.get("VmRSS"), what=what)
            _reset_peak()  # the next event's peak then starts after this stage

    setattr(module, name, wrapper)


def _pin(module) -> None:
    """The registry's SHA-256 pins are the real files'; the rehearsal swaps in the generated files' hashes."""
    import dataclasses
    import json

    with open(os.environ["ANIMA_REHEARSAL_PINS"]) as fh:
        pins = json.load(fh)

    def fix(known):
        key = f"{known.repo_id}/{known.filename}"
        return dataclasses.replace(known, sha256=pins[key]) if key in pins else known

    for name, model in list(module.BASE_MODELS.items()):
        module.BASE_MODELS[name] = dataclasses.replace(model, dit=fix(model.dit))
    module.TEXT_ENCODER, module.VAE = fix(module.TEXT_ENCODER), fix(module.VAE)


_PATCHES = {
    "anima_lora_flow.core.known_models": lambda m: _pin(m) if os.environ.get("ANIMA_REHEARSAL_PINS") else None,
    "anima_lora_flow.trainer.events": lambda m: _wrap_sink(m),
    "anima_lora_flow.models.hub": lambda m: _timed(m, "download", "download"),
    "anima_lora_flow.models.verify": lambda m: _timed(m, "check_file", "verify"),
    "anima_lora_flow.models.convert": lambda m: _timed(m, "convert_single_file_dit", "convert"),
    "anima_lora_flow.trainer.cache": lambda m: _timed(m, "build_cache", "cache"),
    "anima_lora_flow.trainer.components": lambda m: _timed(m, "build_transformer", "load"),
}


def _install() -> None:
    import importlib.abc
    import sys

    class _AfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in _PATCHES:
                return None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
                if spec is not None and spec.loader is not None:
                    run = spec.loader.exec_module

                    def exec_module(module, _run=run, _name=fullname):
                        _run(module)
                        try:
                            _PATCHES[_name](module)
                        except Exception as exc:  # noqa: BLE001 - a probe never breaks the run
                            _record("probe-error", error=repr(exc))

                    spec.loader.exec_module = exec_module
                    return spec
            return None

    sys.meta_path.insert(0, _AfterImport())


if _PROBE:
    _install()
