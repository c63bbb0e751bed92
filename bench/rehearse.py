"""Full-size rehearsal (issue 20): the product, run as a user runs it, on random weights at the real sizes.

    python bench/rehearse.py --json rehearsal.json [--work DIR] [--scale real|reduced] [--sd-scripts-dir DIR]

1. bench/full_anima.py writes both Anima repos (reused when already there).
2. The project's Hub stand-in (tests/models/hub_server.py) serves them on localhost; HF_ENDPOINT points there.
3. The `anima-lora` command runs, each time a fresh process: `models download` (the registry's SHA-256
   pins are first shown to refuse the generated files, then replaced by their hashes), `models verify`,
   `train` on a generated 2-image dataset at 256 px for two optimizer steps (defaults otherwise, plus
   --save-kohya-lora), the same with a base model that has no Diffusers repo (single-file conversion),
   and `train --trainer sd-scripts` (two epochs of one step; stopped after the first state, resumed once).
4. Checks on the LoRA files; per-stage wall time and peak resident memory (bench/probe/sitecustomize.py
   records them inside each process; a sampler records the whole process tree).

Prints a table, writes one JSON, and prints its path last. Exit 0 when every check passed.
Generated files and runs live under --work (default /work/rehearsal/run), never in the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests" / "models"))
if str(ROOT.parent) not in sys.path:
    sys.path.insert(0, str(ROOT.parent))

import full_anima  # noqa: E402
import psutil  # noqa: E402
from hub_server import FakeHub, FakeRepo  # noqa: E402

from anima_lora_flow.core import known_models  # noqa: E402

GIB = 1024**3
RANK = 20
MODULES = 280  # 10 linears x 28 blocks (anima-internals §A4)
REAL_LORA_PARAMS = 28_672_000  # 1,433,600 x rank 20
HOST_LIMIT_GIB = 10.0  # free Colab's 12.7 GB minus the notebook's own
# The CPU runs train on the host in fp32; a GPU run holds none of this on the host (see gpu_host_session).
CPU_ONLY_LABELS = {"load": "load fp32 (CPU training)", "first step": "first step (CPU, fp32)", "save": "save (CPU run)"}


# --- the Hub stand-in over the generated files ---------------------------------------------------------
@dataclass
class MappedRepo(FakeRepo):
    """A FakeRepo whose big files are memory maps and whose hashes come from the generator (no 4 GB re-hash per request)."""

    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def commit(self) -> str:
        import hashlib

        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + self.etag(name).encode())
        return digest.hexdigest()

    def etag(self, name: str) -> str:
        if name in self.sha256:
            return self.sha256[name]
        return super().etag(name)


def serve_repos(generated: full_anima.Generated) -> FakeHub:
    repos = {}
    for repo_id in (known_models.DIFFUSERS_REPO, known_models.SINGLE_FILE_REPO):
        root = generated.repos / repo_id
        files, lfs, hashes = {}, set(), {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            name = path.relative_to(root).as_posix()
            info = generated.manifest["files"].get(f"{repo_id}/{name}")
            if info is None:
                files[name] = path.read_bytes()
                continue
            with open(path, "rb") as fh:
                files[name] = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
            lfs.add(name)
            hashes[name] = info["sha256"]
        repo = MappedRepo(files, lfs)
        repo.sha256 = hashes
        repos[repo_id] = repo
    return FakeHub(repos)


def pins_for(generated: full_anima.Generated) -> dict[str, str]:
    """The generated files' SHA-256 for every file the registry pins (the probe puts them in place)."""
    pinned = [m.dit for m in known_models.BASE_MODELS.values()] + [known_models.TEXT_ENCODER, known_models.VAE]
    out = {}
    for known in pinned:
        info = generated.manifest["files"].get(f"{known.repo_id}/{known.filename}")
        if known.sha256 and info:
            out[f"{known.repo_id}/{known.filename}"] = info["sha256"]
    return out


# --- running the CLI -----------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    rc: int | None = None
    seconds: float = 0.0
    tree_peak_bytes: int = 0  # the sum over the process tree, sampled every 0.2 s
    process_peaks: dict[str, int] = field(default_factory=dict)  # the biggest process of each kind
    log: str = ""
    output: str = ""  # stdout, then stderr
    stdout: str = ""


class TreeSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak, self.per = pid, threading.Event(), 0, {}

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    label = _label(proc.cmdline())
                except psutil.Error:
                    continue
                total += rss
                self.per[label] = max(self.per.get(label, 0), rss)
            self.peak = max(self.peak, total)
            self.stop.wait(0.2)


def _label(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for needle, label in (("anima_train_network", "sd-scripts"), ("trainer.sdscripts", "sd-scripts wrapper"),
                          ("anima_lora_flow.trainer", "trainer"), ("prefect", "prefect server"),
                          ("anima-lora", "cli"), ("accelerate", "accelerate launcher")):  # fmt: skip
        if needle in text:
            return label
    return Path(cmdline[0]).name if cmdline else "?"


def run_cli(name: str, args: list[str], env: dict, logs: Path, *, stop_when=None, command=None) -> Stage:
    """`anima-lora ARGS` in its own process group; `stop_when()` true sends it Ctrl-C (SIGINT) once."""
    exe = shutil.which("anima-lora", path=str(Path(sys.executable).parent)) or "anima-lora"
    log_path = logs / f"{name}.log"
    stage = Stage(name, log=str(log_path))
    started = time.time()
    command = command or [exe, *args]
    print(f"[rehearsal] {name}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(command))}", flush=True)
    err_path = log_path.with_suffix(".err.log")
    # stdout apart from stderr: Prefect's log lines (stderr) would otherwise land inside the --json output
    with open(log_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        interrupted = False
        while proc.poll() is None:
            if stop_when is not None and not interrupted and stop_when():
                os.killpg(proc.pid, signal.SIGINT)
                interrupted = True
            time.sleep(0.5)
        sampler.stop.set()
        sampler.join()
    stage.rc, stage.seconds = proc.returncode, round(time.time() - started, 1)
    stage.tree_peak_bytes, stage.process_peaks = sampler.peak, sampler.per
    stage.stdout = log_path.read_text(errors="replace")
    stage.output = stage.stdout + "\n" + err_path.read_text(errors="replace")
    print(f"[rehearsal] {name}: exit {stage.rc} in {stage.seconds:.0f} s, tree peak {sampler.peak / GIB:.2f} GiB", flush=True)
    return stage


def make_dataset(folder: Path, count: int) -> Path:
    """Small captioned images (256 px squares: one bucket), generated, never a user's folder."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colors = [(200, 80, 80), (80, 160, 220), (90, 200, 120)]
    for i in range(count):
        Image.new("RGB", (256, 256), colors[i % len(colors)]).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("1girl, solo, smile, long hair, masterpiece")
    return folder


# --- reading the probe -----------------------------------------------------------------------------------
def probe_records(path: Path, since: float, until: float) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if since <= rec.get("time", 0) <= until:
            out.append(rec)
    return out


def stage_table(records: list[dict]) -> tuple[dict, list]:
    """Per stage: seconds and peak bytes, from the probe's timed calls and trainer events."""
    stages: dict[str, dict] = {}

    def add(name, seconds, peak):
        entry = stages.setdefault(name, {"seconds": 0.0, "peak_bytes": 0, "calls": 0})
        entry["seconds"] = round(entry["seconds"] + (seconds or 0), 1)
        entry["peak_bytes"] = max(entry["peak_bytes"], peak or 0)
        entry["calls"] += 1

    for rec in records:
        if rec["kind"] == "stage":
            add(rec["stage"], rec["seconds"], rec["peak"])
    events = [r for r in records if r["kind"] == "event"]
    loads = [r for r in records if r["kind"] == "stage" and r["stage"] == "load"]
    steps = [r for r in events if r["event"] == "step"]
    resident = next((r["resident"] for r in steps if r.get("resident")), [])
    if steps and loads:
        add("first step", steps[0]["time"] - loads[-1]["time"], steps[0]["peak"])
    if steps:
        after = [r for r in events if r["time"] > steps[-1]["time"] and r["event"] in ("checkpoint", "done")]
        if after:
            add("save", after[-1]["time"] - steps[-1]["time"], max(r["peak"] or 0 for r in after))
    return stages, resident


# --- LoRA checks -----------------------------------------------------------------------------------------
def lora_modules(keys, suffixes) -> set[str]:
    out = set()
    for key in keys:
        for suffix in suffixes:
            if key.endswith(suffix):
                out.add(key[: -len(suffix)])
    return out


def check_native_lora(path: Path, generated: full_anima.Generated) -> dict:
    """280 modules; rank-20 parameter count; loads into the real-size diffusers model; ComfyUI's key mapping."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    sd = load_file(path)
    modules = lora_modules(sd, (".lora_A.weight", ".lora_B.weight"))
    params = sum(t.numel() for t in sd.values())
    cfg = generated.manifest["configs"]["transformer"]
    expected = _expected_lora_params(cfg)
    result = {
        "file": str(path), "tensors": len(sd), "modules": len(modules), "parameters": params,
        "expected_parameters": expected, "other_keys": sorted(k for k in sd if ".lora_" not in k)[:5],
    }  # fmt: skip
    checks = {
        "native: 280 modules": len(modules) == MODULES and len(sd) == 2 * MODULES,
        f"native: {expected:,} parameters at rank {RANK}": params == expected,
    }
    if generated.manifest["scale"] == "real":
        checks[f"native: {REAL_LORA_PARAMS:,} parameters (real shapes)"] = params == REAL_LORA_PARAMS

    # ComfyUI maps `diffusion_model.<path>` for every `<path>.weight` of its Anima model, whose names are
    # the original ones: the single DiT file's keys without `net.` (anima-internals §A4 "ComfyUI loading").
    dit = generated.file(known_models.SINGLE_FILE_REPO, full_anima.DIT_NAMES[0])
    with safe_open(dit, "pt") as fh:
        originals = {k.removeprefix("net.").removesuffix(".weight") for k in fh.keys()}
    unmapped = sorted(m for m in modules if m.removeprefix("diffusion_model.") not in originals or not m.startswith("diffusion_model."))
    result["comfyui_unmapped"] = unmapped[:5]
    checks["native: every key maps to a ComfyUI Anima weight"] = not unmapped

    result["diffusers"] = _diffusers_load(sd, cfg)
    checks["native: diffusers' Anima conversion + load_lora_adapter, no unexpected/missing key"] = (
        result["diffusers"]["ok"]
    )
    del torch
    return {"lora": result, "checks": checks, "modules": modules}


def _expected_lora_params(cfg: dict) -> int:
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ctx, ff = cfg["text_embed_dim"], int(inner * cfg["mlp_ratio"])
    per_block = 4 * (inner + inner) + 2 * (inner + inner) + 2 * (ctx + inner) + (inner + ff) + (ff + inner)
    return RANK * per_block * cfg["num_layers"]


def _diffusers_load(sd: dict, cfg: dict) -> dict:
    """diffusers' own path: `_convert_non_diffusers_anima_lora_to_diffusers`, then `load_lora_adapter` on a meta model."""
    from accelerate import init_empty_weights
    from diffusers import CosmosTransformer3DModel
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_anima_lora_to_diffusers
    from peft.tuners.lora import LoraLayer

    warnings: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    handler = Catch(logging.WARNING)
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with init_empty_weights():
            model = CosmosTransformer3DModel.from_config(cfg)
        converted = _convert_non_diffusers_anima_lora_to_diffusers(dict(sd))
        transformer_keys = {k: v for k, v in converted.items() if k.startswith("transformer.")}
        model.load_lora_adapter(transformer_keys, prefix="transformer", adapter_name="rehearsal", low_cpu_mem_usage=True)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        logger.removeHandler(handler)
    injected = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    bad = [w for w in warnings if "unexpected keys" in w or "missing keys" in w or "No LoRA keys" in w]
    other = len(converted) - len(transformer_keys)
    loaded = sum(p.numel() for n, p in model.named_parameters() if ".rehearsal." in n)
    return {"ok": not bad and len(injected) == MODULES and other == 0 and loaded == sum(t.numel() for t in sd.values()),
            "injected_modules": len(injected), "adapter_parameters": loaded, "non_transformer_keys": other,
            "warnings": bad[:3]}  # fmt: skip


def kohya_modules(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        return lora_modules(fh.keys(), (".lora_down.weight", ".lora_up.weight", ".alpha"))


def native_to_kohya(modules: set[str]) -> set[str]:
    return {"lora_unet_" + m.removeprefix("diffusion_model.").replace(".", "_") for m in modules}


# --- the rehearsal -----------------------------------------------------------------------------------------
def rehearse(args) -> dict:
    work = Path(args.work).resolve()
    logs = work / "logs"
    shutil.rmtree(work / "runs", ignore_errors=True)
    for sub in ("runs", "hf", "prefect"):  # a fresh user: empty HF cache, no runs; the generated models stay
        shutil.rmtree(work / sub, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    report: dict = {"scale": args.scale, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {}, "checks": {},
                    "runs": {}, "host_limit_gib": HOST_LIMIT_GIB}  # fmt: skip
    checks = report["checks"]

    t0 = time.time()
    generated = full_anima.generate(Path(args.models), args.scale, args.sd_scripts_dir, echo=print)
    report["generate"] = {"seconds": round(time.time() - t0, 1), "dest": str(generated.dest),
                          "params": generated.manifest["params"], "tokenizers": generated.manifest["tokenizers"],
                          "bytes": {k: v["size"] for k, v in generated.manifest["files"].items()}}  # fmt: skip
    probe = work / "probe.jsonl"
    probe.unlink(missing_ok=True)
    pins_path = work / "pins.json"
    pins_path.write_text(json.dumps(pins_for(generated), indent=1))
    cache = Path(args.cache).resolve() if args.cache else work / "cache"
    # A fresh user's model state too (converted bases, hash records); an sd-scripts install beside it is kept.
    shutil.rmtree(cache / "models", ignore_errors=True)

    with serve_repos(generated) as hub:
        env = {
            **os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(work / "hf"), "ANIMA_LORA_CACHE": str(cache),
            "PREFECT_HOME": str(work / "prefect"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": os.pathsep.join([str(BENCH / "probe"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "ANIMA_REHEARSAL_PROBE": str(probe), "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        env.pop("HF_HUB_OFFLINE", None)
        if args.sd_scripts_dir:
            env["ANIMA_SD_SCRIPTS_DIR"] = str(args.sd_scripts_dir)

        # 1. The registry's pins are the real files' hashes: the generated ones must be refused before any download.
        stage = run_cli("pins", ["models", "download", "--backend", "sd-scripts"], env, logs)
        checks["pinned SHA-256 refuses other bytes before downloading (exit 2)"] = (
            stage.rc == 2 and "changed on the Hub" in stage.output and not hub.gets(known_models.TEXT_ENCODER.filename)
            and not any(r[0] == "GET" and "/resolve/" in r[1] for r in hub.requests)
        )
        env["ANIMA_REHEARSAL_PINS"] = str(pins_path)

        def timed_cli(name, cli_args, **kw):
            since = time.time()
            stage = run_cli(name, cli_args, env, logs, **kw)
            records = probe_records(probe, since, time.time())
            stages, resident = stage_table(records)
            report["stages"][name] = {"rc": stage.rc, "seconds": stage.seconds, "tree_peak_bytes": stage.tree_peak_bytes,
                                      "process_peaks": stage.process_peaks, "stages": stages, "log": stage.log}  # fmt: skip
            if resident:
                report["stages"][name]["resident_during_training"] = resident
            return stage

        # 2. models download (Diffusers repo), the conversion of a base without one, the single files; verify.
        stage = timed_cli("download", ["models", "download"])
        checks["models download exits 0"] = stage.rc == 0
        snapshot = _printed_path(stage.output, "diffusers_dir")
        stage = timed_cli("download + convert", ["models", "download", "--base-model", "anima-preview3-base"])
        checks["models download of a single-file base converts it (exit 0)"] = stage.rc == 0 and bool(
            report["stages"]["download + convert"]["stages"].get("convert"))
        converted = _printed_path(stage.output, "diffusers_dir")
        checks["converted weights equal the Diffusers transformer"] = bool(converted) and converted_equal(converted, generated)
        stage = timed_cli("download sd-scripts files", ["models", "download", "--backend", "sd-scripts"])
        checks["models download --backend sd-scripts exits 0"] = stage.rc == 0
        singles = {k: _printed_path(stage.output, k) for k in ("dit", "text_encoder", "vae")}
        stage = timed_cli("verify", ["models", "verify"])
        checks["models verify: every file verified"] = stage.rc == 0 and "verified" in stage.output

        # 3. train on the CPU. Without --models-dir the planner refuses a CPU (the real model would take days):
        # that refusal is checked, then train gets the downloaded folders with --models-dir, as its message says.
        dataset = make_dataset(work / "datasets" / "two", 2)
        common = ["--dataset", str(dataset), "--resolution", "256", "--max-train-epochs", "1", "--repeats", "1",
                  "--save-kohya-lora", "--json"]  # fmt: skip
        stage = run_cli("train without --models-dir", ["train", *common, "--project-name", "refused", "--storage",
                        str(work / "runs" / "refused"), "--work-dir", str(work / "runs" / "refused-work")], env, logs)
        checks["train refuses the real model on a CPU without --models-dir (exit 2)"] = (
            stage.rc == 2 and "cannot train on a CPU" in stage.output)
        native = train(timed_cli, report, "train native", work, common + ["--project-name", "native", "--models-dir", str(snapshot)])
        checks["train native: 2 steps, exit 0"] = native.get("ok", False)
        single = train(timed_cli, report, "train converted", work,
                       common + ["--project-name", "converted", "--models-dir", str(converted)])
        checks["train on the converted single-file base: 2 steps, exit 0"] = single.get("ok", False)

        # 4. sd-scripts backend: single files, real sd-scripts, supervised by the runner; stopped, then resumed.
        if args.skip_sd_scripts:
            report["sd_scripts"] = {"skipped": "--skip-sd-scripts"}
        else:
            report["sd_scripts"] = sd_scripts_stage(timed_cli, report, work, checks, singles, env, logs)

    # LoRA checks
    lora_report = {}
    if native.get("lora"):
        out = check_native_lora(Path(native["lora"]), generated)
        checks.update(out["checks"])
        lora_report["native"] = out["lora"]
        want = native_to_kohya(out["modules"])
        kohya = Path(native["lora"]).with_name(Path(native["lora"]).stem + ".kohya.safetensors")
        if kohya.exists():
            got = kohya_modules(kohya)
            lora_report["kohya_copy"] = {"file": str(kohya), "modules": len(got)}
            checks["--save-kohya-lora names the same 280 modules"] = got == want and len(got) == MODULES
        else:
            checks["--save-kohya-lora names the same 280 modules"] = False
        sd_lora = report.get("sd_scripts", {}).get("lora")
        if sd_lora:
            got = kohya_modules(Path(sd_lora))
            lora_report["sd_scripts"] = {"file": sd_lora, "modules": len(got), "extra": sorted(got - want)[:3],
                                         "missing": sorted(want - got)[:3]}  # fmt: skip
            checks["sd-scripts' LoRA names the same 280 modules"] = got == want
    report["lora"] = lora_report
    report["memory"] = memory_summary(report, generated)
    report["gpu_host"] = gpu_host(generated, env, logs) if not args.skip_gpu_host else None
    host_stages = ["download", "verify", "convert", "cache"]
    if report["gpu_host"]:
        for name, entry in report["gpu_host"].get("stages", {}).items():
            report["memory"][f"GPU host: {name}"] = entry["peak_bytes"]
            host_stages.append(f"GPU host: {name}")
        checks["GPU host stages measured (cache, fp16 and bf16 load)"] = len(report["gpu_host"].get("stages", {})) == 3
    limit = HOST_LIMIT_GIB * GIB
    host = {k: v for k, v in report["memory"].items() if k in host_stages}
    report["host_stages"] = host_stages
    checks[f"host memory of {', '.join(host_stages)} under {HOST_LIMIT_GIB:g} GiB"] = (
        bool(host) and all(v < limit for v in host.values())
    )
    report["seconds"] = round(time.time() - t0, 1)
    report["ok"] = all(v is True or v == "cpu-limit" for v in checks.values())
    return report


def train(timed_cli, report, name, work, extra) -> dict:
    storage = work / "runs" / name.replace(" ", "-") / "storage"
    args = ["train", *extra, "--storage", str(storage), "--work-dir", str(work / "runs" / name.replace(" ", "-") / "work")]
    stage = timed_cli(name, args)
    result = _json_tail(stage.stdout)
    report["runs"][name] = result
    ok = stage.rc == 0 and result.get("outcome") == "completed" and result.get("steps_done") == 2
    lora = result.get("final_lora")
    return {"ok": ok, "lora": lora if lora and Path(lora).exists() else None, "result": result}


def _json_tail(text: str) -> dict:
    """The last top-level JSON object printed (train --json prints it last)."""
    decoder = json.JSONDecoder()
    for match in reversed(list(re.finditer(r"^\{", text, re.M))):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and ("outcome" in value or "error" in value):
            return value
    return {}


def converted_equal(converted: str, generated: full_anima.Generated) -> bool:
    """The converted transformer file holds exactly the Diffusers repo's tensors (same names, same values)."""
    import torch
    from safetensors import safe_open

    name = "transformer/diffusion_pytorch_model.safetensors"
    reference = generated.file(known_models.DIFFUSERS_REPO, name)
    with safe_open(Path(converted) / name, "pt") as a, safe_open(reference, "pt") as b:
        if set(a.keys()) != set(b.keys()):
            return False
        return all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def _printed_path(output: str, key: str) -> str | None:
    match = re.search(rf"^{key}: (.+)$", output, re.M)
    return match.group(1).strip() if match else None


def sd_scripts_stage(timed_cli, report, work, checks, singles, env, logs) -> dict:
    """The runner's session with the sd-scripts backend, in a helper process; stopped after the first state, resumed.

    Not through `train`: its planner refuses a CPU for sd-scripts (no --models-dir applies there), so the
    helper calls what the flow's train task calls, run_training_session, with the same sd-scripts spec.
    """
    dataset = make_dataset(work / "datasets" / "one", 1)
    spec = {"dataset": str(dataset), "storage": str(work / "runs" / "sd-scripts" / "storage"),
            "work_dir": str(work / "runs" / "sd-scripts" / "work"), **singles}  # fmt: skip
    spec_path = work / "sd-scripts-spec.json"
    spec_path.write_text(json.dumps(spec))
    out: dict = {}
    for attempt in ("sd-scripts", "sd-scripts resume"):
        since = time.time()
        stage = run_cli(attempt, [], env, logs, command=[sys.executable, str(Path(__file__).resolve()), "--sd-scripts-session",
                                                        str(spec_path), "--json", "-"])
        result = _json_tail(stage.stdout)
        report["stages"][attempt] = {"rc": stage.rc, "seconds": stage.seconds, "tree_peak_bytes": stage.tree_peak_bytes,
                                     "process_peaks": stage.process_peaks, "stages": {}, "log": stage.log}  # fmt: skip
        out[attempt] = result
        if stage.rc != 0 or result.get("error"):
            logs_text = stage.output + "\n" + "\n".join(
                p.read_text(errors="replace") for p in Path(spec["work_dir"]).rglob("trainer.log"))
            out["stopped_at"] = stopping_line(logs_text) or (result.get("error") or "")[:600]
            out["progress_parsed"] = bool(re.search(r'"event": "step"', _events_text(work)))
            checks["sd-scripts: runs on the CPU (or the line that stops it is named)"] = (
                "cpu-limit" if out["stopped_at"] else False)
            return out
    first, second = out["sd-scripts"], out["sd-scripts resume"]
    checks["sd-scripts: progress parsed, stopped after a saved state"] = (
        first.get("outcome") == "stopped" and first.get("steps_done", 0) >= 1)
    checks["sd-scripts: resumed once and finished 2 steps"] = (
        second.get("outcome") == "completed" and second.get("steps_done") == 2 and second.get("start_step", 0) >= 1)
    if second.get("final_lora") and Path(second["final_lora"]).exists():
        out["lora"] = second["final_lora"]
    # Not a check (the parser is not this script's): whether the runner got sd-scripts' losses at all.
    out["losses_parsed"] = first.get("losses", []) + second.get("losses", [])
    return out


def sd_scripts_session(spec_path: str) -> int:
    """One runner session with the sd-scripts backend (the helper process of sd_scripts_stage)."""
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.dataset.intake import prepare_dataset
    from anima_lora_flow.runner.prepare import open_run_store
    from anima_lora_flow.runner.train import TrainingFailedError, new_run_id, run_training_session
    from anima_lora_flow.trainer.events import Checkpoint

    spec = json.loads(Path(spec_path).read_text())
    config = TrainingConfig(trainer="sd-scripts", dataset=spec["dataset"], storage=spec["storage"],
                            work_dir=spec["work_dir"], project_name="kohya", resolution=256, max_train_epochs=2,
                            repeats=1, mixed_precision="no")  # fmt: skip
    report = prepare_dataset(config.dataset, config.resolved_work_dir(), resolution=256, repeats=1)

    total_steps = 2
    fields = {"dit": spec["dit"], "text_encoder": spec["text_encoder"], "vae": spec["vae"], "precision": "no",
              "total_steps": total_steps}
    state_seen = {"saved": False}

    def on_event(event, outcome):
        print(f"event {event.event} {json.dumps(event.data, default=str)[:300]}", flush=True)
        # Stopped after the first state before the end; the resumed session's last state ends it normally.
        if isinstance(event, Checkpoint) and event.kind == "state" and event.step < total_steps:
            state_seen["saved"] = True

    try:
        result = run_training_session(
            config, items=report.train_items(), dataset_fingerprint=report.fingerprint, models_dir=None,
            store=open_run_store(config), work_dir=config.resolved_work_dir(), run_id=new_run_id(),
            should_stop=lambda *_: state_seen["saved"], on_event=on_event, log=print,
            job_fields=fields, report=report,
        )  # fmt: skip
        print(json.dumps(result.to_dict(), default=str))
        return 0
    except TrainingFailedError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1


def _events_text(work: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (work / "runs" / "sd-scripts" / "work").rglob("events.jsonl"))


def stopping_line(text: str) -> str | None:
    """Where sd-scripts stopped: the last frame of the first traceback whose error is its own (not the launcher's)."""
    launcher = ("CalledProcessError", "SdScriptsFailed", "TrainingFailedError")
    for block in text.split("Traceback (most recent call last):")[1:]:
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)', block)
        error = re.search(r"^(\w+(?:\.\w+)*(?:Error|Exception)\b[^\n]*)", block, re.M)
        if frames and error and not any(name in error.group(1) for name in launcher):
            own = [f for f in frames if "site-packages" not in f[0]] or frames  # sd-scripts' line, not torch's
            path, line, func, code = own[-1]
            return f"{path}:{line} in {func}: {code.strip()} -> {error.group(1)}"[:600]
    return None


def gpu_host(generated, env, logs) -> dict:
    """The host side of a GPU run, in a fresh process: gpu_host_session on the Diffusers repo (see there)."""
    folder = generated.repos / known_models.DIFFUSERS_REPO
    clean = {k: v for k, v in env.items() if k != "ANIMA_REHEARSAL_PROBE"}
    work = logs.parent / "gpu-host"
    shutil.rmtree(work, ignore_errors=True)
    started = time.time()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--gpu-host-session", str(folder), str(work),
                          "--json", "-"], capture_output=True, text=True, env=clean)  # fmt: skip
    (logs / "gpu-host.log").write_text(out.stdout + out.stderr)
    result = _json_tail(out.stdout)
    if out.returncode != 0 or "stages" not in result:
        return {"error": (out.stderr or out.stdout)[-500:], "seconds": round(time.time() - started, 1)}
    return result


def gpu_host_session(models_dir: str, work: str) -> int:
    """What a GPU run holds on the host: build_cache, then build_transformer, in build_session's order.

    On a T4 (fp16) the encoders run in fp32 and the DiT loads in fp16; on bf16 GPUs both are bf16.
    Here the device is the CPU, so the cache stage also holds the encoders' activations (an upper
    bound at 256 px); every loaded weight is read once, as `.to("cuda")` reads it. Peaks are VmHWM
    (anonymous + file-backed pages: the bf16 safetensors are memory-mapped, so their pages are page
    cache the kernel can drop), reset per stage; RssAnon at the end of each stage is what cannot be dropped.
    """
    import gc

    import torch

    from anima_lora_flow.trainer.cache import build_cache
    from anima_lora_flow.trainer.components import build_transformer, release_memory
    from anima_lora_flow.core.train_items import TrainItem

    def status() -> dict:
        with open("/proc/self/status") as fh:
            return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh
                    if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:"))}  # fmt: skip

    def reset_peak() -> None:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    def stage(name, fn):
        reset_peak()
        started = time.time()
        value = fn()
        now = status()
        stages[name] = {"seconds": round(time.time() - started, 1), "peak_bytes": now["VmHWM"],
                        "rss_anon_bytes": now["RssAnon"], "rss_file_bytes": now["RssFile"]}  # fmt: skip
        return value

    def load_and_read(dtype):
        model = build_transformer(Path(models_dir), dtype, True)
        with torch.no_grad():
            for p in model.parameters():  # every page read once, as the copy to the GPU reads it
                p.sum()
        return model

    dataset = make_dataset(Path(work) / "images", 2)
    items = [TrainItem(p, p.with_suffix(".txt").read_text(), (256, 256)) for p in sorted(dataset.glob("*.png"))]
    stages: dict[str, dict] = {}
    base = status()
    stage("cache fp32 (T4)", lambda: build_cache(items, Path(models_dir), Path(work) / "run", torch.device("cpu"),
                                                 torch.float32))  # fmt: skip
    model = stage("load fp16 (T4)", lambda: load_and_read(torch.float16))
    del model
    gc.collect()
    release_memory()
    model = stage("load bf16", lambda: load_and_read(torch.bfloat16))
    print(json.dumps({"outcome": "measured", "base_rss_bytes": base["VmRSS"], "stages": stages}))
    return 0


def memory_summary(report, generated) -> dict:
    """The peak resident bytes per stage (the probe's, in the process that ran the stage)."""
    out: dict[str, int] = {}
    for run in report["stages"].values():
        for name, entry in run.get("stages", {}).items():
            out[name] = max(out.get(name, 0), entry["peak_bytes"])
    return out


def print_table(report: dict) -> None:
    print("\nstage                      wall s   peak GiB   (process tree peak GiB)")
    for run_name, run in report["stages"].items():
        print(f"{run_name:<26} {run['seconds']:>7.0f}   {'':>8}   ({run['tree_peak_bytes'] / GIB:.2f}; exit {run['rc']})")
        for name, entry in run.get("stages", {}).items():
            label = CPU_ONLY_LABELS.get(name, name) if run_name.startswith("train") else name
            print(f"  {label:<24} {entry['seconds']:>7.1f}   {entry['peak_bytes'] / GIB:>8.2f}")
    if report.get("gpu_host") and "stages" in report["gpu_host"]:
        print(f"{'GPU host (CPU stand-in)':<26} {'':>7}   {'':>8}   (anonymous GiB at the end of the stage)")
        for name, entry in report["gpu_host"]["stages"].items():
            print(f"  {name:<24} {entry['seconds']:>7.1f}   {entry['peak_bytes'] / GIB:>8.2f}   "
                  f"({entry['rss_anon_bytes'] / GIB:.2f})")
    for name, run in report["stages"].items():
        if run.get("resident_during_training"):
            mods = ", ".join(f"{m['class']} {m['parameters'] / 1e6:.1f}M {m['dtype'].removeprefix('torch.')}"
                             for m in run["resident_during_training"])
            print(f"resident during training ({name}): {mods}")
    for name, lora in report.get("lora", {}).items():
        print(f"LoRA {name}: " + ", ".join(f"{k} {v}" for k, v in lora.items() if k in ("tensors", "modules", "parameters")))
    if "losses_parsed" in report.get("sd_scripts", {}):
        print(f"sd-scripts losses the runner parsed: {report['sd_scripts']['losses_parsed'] or 'none'}")
    if report.get("sd_scripts", {}).get("stopped_at"):
        print(f"sd-scripts stopped at: {report['sd_scripts']['stopped_at']}")
    print("\nchecks")
    for name, value in report["checks"].items():
        mark = "PASS" if value is True else ("CPU LIMIT" if value == "cpu-limit" else "FAIL")
        print(f"  {mark:<9} {name}")
    print(f"\n{'all checks passed' if report['ok'] else 'SOME CHECKS FAILED'} in {report['seconds'] / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, metavar="PATH", help="where to write the report")
    parser.add_argument("--work", default="/work/rehearsal/run", help="scratch folder (HF cache, runs, logs)")
    parser.add_argument("--models", default=None, help="folder for the generated models (default: WORK/models-SCALE)")
    parser.add_argument("--cache", default=None, help="ANIMA_LORA_CACHE for the runs (holds the sd-scripts install)")
    parser.add_argument("--scale", choices=list(full_anima.SCALES), default="real")
    parser.add_argument("--sd-scripts-dir", type=Path, default=os.environ.get("ANIMA_SD_SCRIPTS_DIR"),
                        help="local sd-scripts clone at the pinned commit (default: $ANIMA_SD_SCRIPTS_DIR)")
    parser.add_argument("--skip-sd-scripts", action="store_true", help="leave out the sd-scripts backend")
    parser.add_argument("--skip-gpu-host", action="store_true", help="leave out the GPU host's cache and load measurement")
    parser.add_argument("--sd-scripts-session", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-host-session", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sd_scripts_session:
        return sd_scripts_session(args.sd_scripts_session)
    if args.gpu_host_session:
        return gpu_host_session(*args.gpu_host_session)
    args.models = args.models or str(Path(args.work) / f"models-{args.scale}")
    report = rehearse(args)
    print_table(report)
    path = Path(args.json).resolve()
    path.write_text(json.dumps(report, indent=1, default=str))
    print(path)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
