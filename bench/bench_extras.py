"""Time validation and sampling against the training steps, through the trainer's own run: `python bench/bench_extras.py`.

Issue 21 item 6. The tiny model trains on a generated dataset through `trainer.run.run_training`, with
the validation loss at every epoch's end and a sample grid every `--every` epochs (the dataset's own
captions by default, as a run without a prompt file; `--prompts N` writes a prompt file instead). No
trainer code changes: the bench swaps in timed wrappers of the functions the loop calls (`validate`,
`sample_now`, `save_lora`, `save_full_state`, and inside a sampling point `generate` and `build_vae`),
and counts the DiT's forwards with a forward pre-hook, so every part is measured in wall and CPU
seconds with its number of forwards. The training steps' time is train()'s time less those parts.

The shares follow the planner's definition (planner/extras.py): the extra work's time over the
training steps' time. Next to them the bench prints the planner's figures: its forward-per-step rule
applied to the measured CPU step, and its T4 and H100 predictions at the real model's defaults
(predictions, not measurements). See bench/NOTES.md for what transfers from a CPU and what does not.

    python bench/bench_extras.py --out extras.json                       # 30 images x 5 repeats, 2 epochs
    python bench/bench_extras.py --images 3 --repeats 1 --prompts 2 --sample-steps 2 --sample-size 64  # CI
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from anima_lora_flow.core.train_items import TrainItem
from anima_lora_flow.trainer import loop, run, sampling
from anima_lora_flow.trainer.tiny import TAG_WORDS, build_tiny_model

TAGS = [w for w in TAG_WORDS if w.isalnum() and w not in ("a", "the", "of", "and", "with", "in", "on")]
SAMPLING_PARTS = ("base_row", "lora_row", "vae_load", "grid", "release_memory")  # the timed parts of a sampling point
NOW = 1_700_000_000.0  # the planner's predictions need a fixed clock, nothing else


# --- timing -------------------------------------------------------------------------------------------


class Clock:
    """Wall and CPU time of named parts, and the DiT forwards each part ran (a part may hold others)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.phase = "setup"
        self.forwards: Counter[str] = Counter()

    @contextlib.contextmanager
    def part(self, name: str, **info: Any) -> Iterator[None]:
        outer, self.phase = self.phase, name
        before, wall, cpu = self.forwards[name], time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.records.append(dict(part=name, wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu,
                                     forwards=self.forwards[name] - before, **info))  # fmt: skip
            self.phase = outer

    def count_forward(self, module, args, kwargs) -> None:
        self.forwards[self.phase] += 1

    def of(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["part"] == name]


def _adapters_off(model: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and m.disable_adapters for m in model.modules())


@contextlib.contextmanager
def instrumented(clock: Clock) -> Iterator[None]:
    """The trainer's functions, each wrapped in a timer, for the length of one run (restored after)."""
    saved: list[tuple[object, str, object]] = []

    def swap(module: object, name: str, make: Callable[[Callable], Callable]) -> None:
        original = getattr(module, name)
        saved.append((module, name, original))
        setattr(module, name, make(original))

    def timed(part: str, info: Callable[..., dict] = lambda *a: {}) -> Callable[[Callable], Callable]:
        def make(original):
            def wrapper(*args, **kwargs):
                with clock.part(part, **info(*args)):
                    return original(*args, **kwargs)

            return wrapper

        return make

    def train(original):
        def wrapper(s):
            net = s.accelerator.unwrap_model(s.model)
            hook = net.register_forward_pre_hook(clock.count_forward, with_kwargs=True)
            try:
                with clock.part("train", total_steps=s.progress.total_steps, start_step=s.progress.global_step):
                    return original(s)
            finally:
                hook.remove()

        return wrapper

    def sample_now(original):
        def wrapper(s):
            if s.sampling is None or s.sampling.last_step == s.progress.global_step:
                return original(s)  # nothing to draw at this step: no sampling point to time
            with clock.part("sampling_point", step=s.progress.global_step, epoch=s.progress.epoch):
                return original(s)

        return wrapper

    def generate(original):
        def wrapper(transformer, vae, plan, accelerator):
            row = "base_row" if _adapters_off(transformer) else "lora_row"
            with clock.part(row, images=len(plan.prompts)):
                return original(transformer, vae, plan, accelerator)

        return wrapper

    def build_vae(original):
        def wrapper(*args, **kwargs):
            with clock.part("vae_load"):
                vae = original(*args, **kwargs)
            decode = vae.decode

            def timed_decode(*a, **k):
                with clock.part("vae_decode"):
                    return decode(*a, **k)

            vae.decode = timed_decode  # this instance only; freed after the sampling point
            return vae

        return wrapper

    try:
        swap(run, "train", train)  # run_training calls train() through run's namespace
        swap(loop, "validate", timed("validation", lambda s: {"epoch": s.progress.epoch}))
        swap(loop, "save_lora", timed("saving"))
        swap(loop, "save_full_state", timed("saving"))
        swap(loop, "sample_now", sample_now)  # the run's end and a stop
        swap(sampling, "sample_now", sample_now)  # at_epoch_end's call
        swap(sampling, "generate", generate)
        swap(sampling, "build_vae", build_vae)
        swap(sampling, "sample_grid", timed("grid"))
        swap(sampling, "release_memory", timed("release_memory"))  # gc.collect + malloc_trim after the VAE
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)


# --- the run --------------------------------------------------------------------------------------------


def make_dataset(folder: Path, count: int, size: int, repeats: int, seed: int = 0) -> list[TrainItem]:
    """`count` smooth random images at size x size (one bucket), each with 5 tags as its caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        coarse = rng.integers(0, 256, (size // 32, size // 32, 3), dtype=np.uint8)
        path = folder / f"img{i:04d}.png"
        Image.fromarray(coarse).resize((size, size), Image.BILINEAR).save(path)
        caption = ", ".join(rng.choice(TAGS, 5, replace=False))
        items.append(TrainItem(path, caption, (size, size), repeats=repeats))
    return items


def write_prompts(path: Path, items: Sequence[TrainItem], count: int, steps: int, size: int) -> Path:
    lines = [f"{item.caption} --w {size} --h {size} --s {steps} --d {i}" for i, item in enumerate(items[:count])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_for(args: argparse.Namespace, prompt_file: Path | None) -> dict:
    """The trainer's defaults but for the tiny model's size, the CPU-friendly precision and the sampling cadence."""
    return dict(
        project_name="bench", dataset="unused", resolution=args.resolution, network_dim=args.rank,
        network_alpha=args.rank, max_train_epochs=args.epochs, batch_size=1, gradient_checkpointing=False,
        mixed_precision="no", save_state_every_minutes=0, min_bucket_reso=64 if args.sample_size else 256,
        sample_every_n_epochs=args.every, **({"sample_prompts": str(prompt_file)} if prompt_file else {}),
    )  # fmt: skip


def measure(args: argparse.Namespace, tmp: Path) -> tuple[Clock, dict, list[TrainItem]]:
    models = args.models or build_tiny_model(tmp / "anima-tiny", seed=0)
    items = make_dataset(tmp / "images", args.images, args.resolution, args.repeats)
    prompt_file = None
    if args.prompts:
        prompt_file = write_prompts(tmp / "prompts.txt", items, args.prompts, args.sample_steps,
                                    args.sample_size or args.resolution)  # fmt: skip
    config = config_for(args, prompt_file)
    job = run.TrainJob(config=config, items=[i.to_json() for i in items], models_dir=str(models),
                       work_dir=str(tmp / "work"), output_dir=str(tmp / "out"), dataset_fingerprint="bench")  # fmt: skip
    clock, events = Clock(), []
    with instrumented(clock), clock.part("run"):
        run.run_training(job, events.append)
    failed = [e.error for e in events if getattr(e, "event", "") == "samples" and e.error]
    if failed:
        raise RuntimeError(f"sampling failed in the bench run: {failed[0]}")
    return clock, config, items


# --- the report -----------------------------------------------------------------------------------------


def _sum(records: list[dict], key: str = "wall_s") -> float:
    return float(sum(r[key] for r in records))


def _part(records: list[dict]) -> dict:
    return {"count": len(records), "wall_s": _sum(records), "cpu_s": _sum(records, "cpu_s"),
            "forwards": int(sum(r["forwards"] for r in records))}  # fmt: skip


def summarise(clock: Clock) -> dict:
    (train,) = clock.of("train")
    (whole,) = clock.of("run")
    validation, saving, points = clock.of("validation"), clock.of("saving"), clock.of("sampling_point")
    base, lora = clock.of("base_row"), clock.of("lora_row")
    extras = {k: _sum(validation, k) + _sum(points, k) for k in ("wall_s", "cpu_s")}
    steps = {k: train[k] - extras[k] - _sum(saving, k) for k in ("wall_s", "cpu_s")}
    n_steps = train["total_steps"] - train["start_step"]
    val_forwards = sum(r["forwards"] for r in validation)
    lora_forwards = sum(r["forwards"] for r in lora)
    row_forwards = lora_forwards + sum(r["forwards"] for r in base)
    out = {
        "steps": n_steps,
        "training_steps": {**steps, "forwards": train["forwards"], "s_per_step": steps["wall_s"] / n_steps,
                           "cpu_s_per_step": steps["cpu_s"] / n_steps},  # fmt: skip
        "validation": {**_part(validation), "each": validation},
        "sampling_points": {**_part(points), "each": points},
        "lora_row": {**_part(lora), "each": lora},
        "base_row": {**_part(base), "each": base},
        "vae_load": _part(clock.of("vae_load")),
        "vae_decode": _part(clock.of("vae_decode")),
        "grid": _part(clock.of("grid")),
        "release_memory": _part(clock.of("release_memory")),
        "saving": _part(saving),
        # what a point spends outside its rows, VAE load, grid and freeing: writing and reading the PNGs, events
        "sampling_rest": {k: _sum(points, k) - sum(_sum(clock.of(p), k) for p in SAMPLING_PARTS) for k in ("wall_s", "cpu_s")},
        "setup_s": whole["wall_s"] - train["wall_s"],  # cache, model load, LoRA, optimizer: not counted below
        "s_per_forward": {
            "validation": _sum(validation) / val_forwards if val_forwards else None,
            "lora_row": _sum(lora) / lora_forwards if lora_forwards else None,  # with its share of decoding
            # the rows' denoising alone (both rows, less the VAE decodes inside them): what the planner's rule prices
            "sampling_denoise": (_sum(lora) + _sum(base) - _sum(clock.of("vae_decode"))) / row_forwards if row_forwards else None,
        },
    }
    out["share"] = {  # the planner's definition: extra time / the training steps' time
        key: {k: v[k] / steps[k] for k in ("wall_s", "cpu_s")}
        for key, v in (("validation", _part(validation)), ("sampling", _part(points)), ("validation_and_sampling", extras))
    }
    # The same time as a part of the loop (steps + extras): what a user waits on, bounded by 1 however short the run.
    out["fraction_of_loop"] = {
        key: {k: v[k] / (steps[k] + extras[k]) for k in ("wall_s", "cpu_s")}
        for key, v in (("validation", _part(validation)), ("sampling", _part(points)), ("validation_and_sampling", extras))
    }
    return out


def planner_figures(config: dict, items: list[TrainItem], measured: dict) -> dict:
    """The planner's rule on this CPU (its forward-per-step ratio applied to the measured step), and its GPU predictions."""
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.planner import extras
    from anima_lora_flow.planner.plan import make_plan
    from anima_lora_flow.platforms.detect import detect_platform

    cfg = TrainingConfig(**config)
    eff = run.effective_numbers(items, cfg)
    sec_per_step = measured["training_steps"]["s_per_step"]
    # estimate() rounds its seconds to 0.1 s, coarser than a tiny run's; its forwards are linear in the step's
    # time, so they are priced at 1000x the measured step and scaled back.
    est = extras.estimate(cfg, eff, 1000 * sec_per_step, None, "no")
    per_forward = est.validation_s_per_epoch / est.validation_forwards_per_epoch / 1000
    train_s = sec_per_step * eff.total_steps
    validation = per_forward * est.validation_forwards_per_epoch * cfg.max_train_epochs
    points = est.sampling_points
    # A point's forwards and the base row's, at the predicted forward; the VAE's load and decode are left out:
    # the planner's figures for them are the real ~250 MB decoder on a GPU (3 s load), nothing like the tiny one.
    sampling_forwards = (points + (1 if points else 0)) * est.sampling_forwards_per_point * per_forward
    cpu = {
        "rule": "a no-grad forward costs a third of a training step (core/step_model.forward_seconds); "
                "VAE load/decode not scaled",
        "s_per_forward": per_forward,
        "validation_forwards_per_epoch": est.validation_forwards_per_epoch,
        "sampling_forwards_per_point": est.sampling_forwards_per_point,
        "sampling_points": points,
        "validation_s": validation,
        "sampling_forwards_s": sampling_forwards,
        "share": {"validation": validation / train_s, "sampling_forwards": sampling_forwards / train_s,
                  "validation_and_sampling": (validation + sampling_forwards) / train_s},
    }
    platform_ = detect_platform({}, gpu=lambda: None, now=NOW)
    data = {(768, 768): 30 * 5}  # the planner's own T4 case (tests/planner/test_planner_extras.py): 30 images x 5
    gpus = {}
    for gpu in ("T4", "H100"):
        for every in (0, 5):
            plan = make_plan(TrainingConfig(dataset="/d", sample_every_n_epochs=every), data, platform_, gpu=gpu,
                             now=NOW, cwd=tempfile.gettempdir())  # fmt: skip
            e = plan.extras
            gpus[f"{gpu} sample_every_n_epochs={every}"] = {
                "status": "PREDICTION (planner, real model defaults: 768 px, rank 20, 30 images x 5 repeats, 10 epochs)",
                "sec_per_step": plan.sec_per_step,
                "validation_s_per_epoch": e.validation_s_per_epoch, "sampling_s_per_point": e.sampling_s_per_point,
                "base_row_s": e.base_row_s, "total_s": e.total_s, "share_of_training": e.share_of_training,
            }  # fmt: skip
    return {"cpu_scaled": cpu, "gpu_predictions": gpus}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict:
    load = os.getloadavg()
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": threads,
            "torch": torch.__version__, "load_average_1_5_15": [round(x, 2) for x in load]}  # fmt: skip


def format_report(result: dict) -> str:
    m, p = result["measured"], result["planner"]
    steps = m["training_steps"]
    rows = [("training steps", m["steps"], steps["forwards"], steps["wall_s"], steps["cpu_s"])]
    for r in m["validation"]["each"]:
        rows.append((f"validation, epoch {r['epoch']}", 1, r["forwards"], r["wall_s"], r["cpu_s"]))
    for r in m["sampling_points"]["each"]:
        rows.append((f"sampling point, step {r['step']}", 1, r["forwards"], r["wall_s"], r["cpu_s"]))
    for r in m["lora_row"]["each"]:
        rows.append(("  of which LoRA row", 1, r["forwards"], r["wall_s"], r["cpu_s"]))
    for r in m["base_row"]["each"]:
        rows.append(("  of which base row (once)", 1, r["forwards"], r["wall_s"], r["cpu_s"]))
    for key, label in (("vae_load", "  of which VAE loads"), ("vae_decode", "  of which VAE decodes (in the rows)"),
                       ("grid", "  of which grid drawing"), ("release_memory", "  of which freeing the VAE"),
                       ("saving", "saving (LoRA, state)")):  # fmt: skip
        rows.append((label, m[key]["count"], m[key]["forwards"], m[key]["wall_s"], m[key]["cpu_s"]))
        if key == "release_memory":
            rest = m["sampling_rest"]
            rows.append(("  of which the rest (PNGs, events)", len(m["sampling_points"]["each"]), 0, rest["wall_s"], rest["cpu_s"]))
    lines = [f"{'part':34} {'count':>5} {'forwards':>8} {'wall s':>8} {'CPU s':>8}"]
    lines += [f"{name:34} {n:>5} {f:>8} {w:>8.2f} {c:>8.2f}" for name, n, f, w, c in rows]
    lines.append(f"setup (cache, model, LoRA): {m['setup_s']:.1f} s wall; {steps['s_per_step'] * 1e3:.1f} ms per step")
    fwd = m["s_per_forward"]
    lines.append("s per forward: validation " + (f"{fwd['validation'] * 1e3:.1f} ms" if fwd["validation"] else "-")
                 + ", LoRA row incl. decode " + (f"{fwd['lora_row'] * 1e3:.1f} ms" if fwd["lora_row"] else "-")
                 + ", denoising alone " + (f"{fwd['sampling_denoise'] * 1e3:.1f} ms" if fwd["sampling_denoise"] else "-")
                 + f"; planner's rule on this CPU: {p['cpu_scaled']['s_per_forward'] * 1e3:.1f} ms (step / 3)")  # fmt: skip
    lines.append("")
    lines.append(f"{'share of the training steps':34} {'wall':>8} {'CPU':>8} {'planner rule, CPU':>18}")
    planned = p["cpu_scaled"]["share"]
    for key, plan_key in (("validation", "validation"), ("sampling", "sampling_forwards"),
                          ("validation_and_sampling", "validation_and_sampling")):  # fmt: skip
        share = m["share"][key]
        lines.append(f"{key:34} {100 * share['wall_s']:>7.1f}% {100 * share['cpu_s']:>7.1f}% {100 * planned[plan_key]:>17.1f}%")
    lines.append("  (planner rule: forwards only, the VAE's load and decode are not scaled to the tiny model)")
    lines.append("")
    lines.append("PREDICTIONS by the planner for the real model (768 px, rank 20, 30 images x 5, 10 epochs), not measured:")
    for name, g in p["gpu_predictions"].items():
        share = g["share_of_training"]
        lines.append(f"  {name:32} validation {g['validation_s_per_epoch']} s/epoch, grid {g['sampling_s_per_point']} s, "
                     f"share {100 * share:.1f}%" if share is not None else f"  {name}: no time")  # fmt: skip
    mach = result["machine"]
    lines.append(f"machine: {mach['cores']} cores ({mach['cpu']}), torch {mach['torch']}, {mach['torch_threads']} threads, "
                 f"load average before {result['load_before']} after {mach['load_average_1_5_15']}")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--images", type=int, default=30, help="generated training images (the planner's T4 case: 30)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per image (the planner's T4 case: 5)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--rank", type=int, default=20)
    ap.add_argument("--every", type=int, default=1, help="sample_every_n_epochs")
    ap.add_argument("--prompts", type=int, default=0, help="write a prompt file of N captions (0: the dataset's own, as a run)")
    ap.add_argument("--sample-steps", type=int, default=20, help="with --prompts: steps per image")
    ap.add_argument("--sample-size", type=int, default=0, help="with --prompts: image side (0: the resolution)")
    ap.add_argument("--models", type=Path, help="a tiny model folder to reuse (default: built in a temp dir)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default); 1 by default: on a shared 2-core box two threads made "
                         "the tiny step 9x slower (300 vs 34 ms, spinning OpenMP threads), and tiny tensors gain nothing")  # fmt: skip
    ap.add_argument("--out", type=Path, help="write the JSON here")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="anima-bench-extras-") as tmp:
        try:
            clock, config, items = measure(args, Path(tmp))
        finally:
            torch.set_num_threads(threads)  # main() is also called in-process (tests)
        measured = summarise(clock)
        result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "config": config,
                  "measured": measured, "planner": planner_figures(config, items, measured), "machine": machine(args.threads or threads),
                  "load_before": load_before}  # fmt: skip
    print(format_report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
