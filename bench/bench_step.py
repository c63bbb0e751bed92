"""Time the native trainer's real training step: `python bench/bench_step.py --model real ...`.

Each combination of the list options (resolution, batch, grad checkpointing, precision) builds the DiT
with random weights, applies the trainer's LoRA, optimizer, LR schedule and accelerate wrapping, and
then runs the trainer's own loop, `trainer.loop.train`, on in-memory random latents and contexts. Its
`stop_requested` hook, called once after every optimizer step, is the bench's clock: it records a
CUDA event (GPU) or time.perf_counter (CPU) and ends the run by raising once enough steps are done,
so no state or LoRA file is written. What is timed is therefore exactly what a training run executes
per step: collate, forward + flow-matching loss, backward, grad clipping, optimizer, scheduler,
zero_grad and the loop's own bookkeeping (loss read-out every 10 steps).

FLOPs per step come from torch.utils.flop_counter.FlopCounterMode over the first step (eager, before
--compile); MFU divides them by the median step time and by a matmul peak measured on this machine.
See bench/NOTES.md for the method, the targets of issue 10 and the predictions log.

    python bench/bench_step.py --model real --resolution 768 --batch 1 4 --grad-checkpointing on off \
        --precision bf16 fp16 --steps 20 --warmup 5 --json bench-h100.json
    python bench/bench_step.py --model tiny --resolution 256 --precision fp32 --steps 5 --warmup 2   # CPU/CI
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# The real Anima DiT (anima-internals §C); the tiny one is the trainer's own TINY_TRANSFORMER.
REAL_TRANSFORMER = dict(  # noqa: C408 (the keyword form of CosmosTransformer3DModel(...), as tiny.py)
    in_channels=16, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28, mlp_ratio=4.0,
    text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
    rope_scale=(1.0, 4.0, 4.0), concat_padding_mask=True, extra_pos_embed_type=None,
)  # fmt: skip
REAL_CONTEXT_TOKENS = 512  # AnimaTextConditioner.min_sequence_length: every cached context is padded to it
CAPTION_TOKENS = 32  # a typical tag caption: the cache stores contexts trimmed to their T5 tokens

# anima-internals §C, LoRA rank 16, batch 1, TFLOP per step: resolution -> (no GC, GC).
REFERENCE_TFLOP = {512: (8.4, 12.3), 768: (20.9, 30.2), 1024: (42.8, 60.9)}

PRECISIONS = {"bf16": "bf16", "fp16": "fp16", "fp32": "no", "no": "no"}  # CLI name -> trainer's mixed_precision


class _StopBench(Exception):
    """Raised from the trainer's stop_requested hook once the bench has the steps it asked for."""


@dataclass
class Combo:
    model: str
    resolution: int
    batch: int
    rank: int
    grad_checkpointing: bool
    precision: str
    compile_mode: str = "none"  # config compile_mode: none, blocks, model, cuda-graphs

    @property
    def label(self) -> str:
        gc_ = "gc" if self.grad_checkpointing else "nogc"
        compiled = "" if self.compile_mode == "none" else f" {self.compile_mode}"
        return f"{self.model} {self.resolution}px bs{self.batch} r{self.rank} {gc_} {self.precision}{compiled}"


@dataclass
class Row:
    combo: str
    device: str
    ms_step_median: float | None = None
    ms_step_iqr: float | None = None
    ms_step_mean: float | None = None  # wall time of the timed region / steps (one sync at each end)
    ms_image: float | None = None
    peak_mem_gib: float | None = None
    mem_source: str = ""
    tflop_step: float | None = None  # counted by FlopCounterMode
    tflop_ref: float | None = None  # anima-internals §C (rank 16), real shapes only
    achieved_tflops: float | None = None
    peak_tflops: float | None = None  # measured matmul peak in the combo's dtype (fp32 on CPU)
    mfu: float | None = None
    loss: float | None = None  # last loss the loop read out, a sanity check (finite)
    error: str | None = None


# --- matmul peak --------------------------------------------------------------------------------------

def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int, iters: int = 10, repeats: int = 3) -> float:
    """FLOP/s of a square `size`^3 matmul loop in `dtype` on `device`: the best of `repeats` timed loops.

    Measured again for every combination, right after its steps, so that a shared machine's load at
    that moment hits the step time and the peak alike.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = max(best, 2 * size**3 * iters / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- building -----------------------------------------------------------------------------------------


def build_transformer_for_bench(model: str, device: torch.device, dtype: torch.dtype, gradient_checkpointing: bool, tmp: Path):
    """The frozen DiT with random weights on `device`.

    tiny: the trainer's TINY_TRANSFORMER is saved and loaded through trainer.components.build_transformer
    (the trainer's own builder). real: 2 B parameters would take minutes to init on the CPU and 4 GB to
    write, so the model is made on the meta device, materialised with to_empty on `device` and initialised
    there; then build_transformer's own preparation (freeze, gradient checkpointing, fp16 islands) applies.
    """
    from anima_lora_flow.trainer.components import build_transformer, prepare_frozen_transformer
    from anima_lora_flow.trainer.tiny import TINY_TRANSFORMER
    from diffusers import CosmosTransformer3DModel

    if model == "tiny":
        folder = tmp / "tiny-models"
        if not (folder / "transformer" / "config.json").is_file():
            torch.manual_seed(0)
            CosmosTransformer3DModel(**TINY_TRANSFORMER).save_pretrained(folder / "transformer")
        return build_transformer(folder, dtype, gradient_checkpointing).to(device)

    with torch.device("meta"):
        transformer = CosmosTransformer3DModel(**REAL_TRANSFORMER)
    transformer.to_empty(device=device)
    _random_init(transformer)
    keep_fp32 = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, module in transformer.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if not any(k in name for k in keep_fp32):
                param.data = param.data.to(dtype)
    return prepare_frozen_transformer(transformer, dtype, gradient_checkpointing)


@torch.no_grad()
def _random_init(module: torch.nn.Module) -> None:
    """Weights that keep activations finite: N(0, 0.02) matrices, unit norm scales, zero biases."""
    generator = torch.Generator(device=next(module.parameters()).device).manual_seed(0)
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, 0.02, generator=generator)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.fill_(1.0)


def fake_cache(model: str, batch: int, resolution: int, text_dim: int, context_length: int):
    """A trainer.cache.TrainingCache of `batch` items at `resolution` (fp32 on the CPU, as the real cache)."""
    from anima_lora_flow.trainer.cache import TrainingCache

    side = resolution // 8
    generator = torch.Generator().manual_seed(1)
    tokens = min(CAPTION_TOKENS, context_length)
    return TrainingCache(
        latents=[torch.randn(16, 1, side, side, generator=generator) for _ in range(batch)],
        contexts=[torch.randn(tokens, text_dim, generator=generator) for _ in range(batch)],
        empty_context=torch.randn(1, text_dim, generator=generator),
        context_length=context_length,
    )


def build_session(combo: Combo, device: torch.device, total_steps: int, tmp: Path):
    """A trainer.loop.Session built by the trainer's own builders (trainer.run.build_lora_training), with a
    synthetic cache and sampler in place of the dataset's."""
    from anima_lora_flow.config import TrainingConfig
    from anima_lora_flow.effective import Machine, derive
    from anima_lora_flow.trainer.data import BucketSampler
    from anima_lora_flow.trainer.loop import Session, build_accelerator, weight_dtype
    from anima_lora_flow.trainer.run import build_lora_training
    from anima_lora_flow.trainer.native import NativeBackend
    from anima_lora_flow.trainer.state import TrainingProgress

    precision = PRECISIONS[combo.precision]
    cfg = TrainingConfig(
        project_name="bench", dataset="unused", resolution=combo.resolution, batch_size=combo.batch,
        network_dim=combo.rank, network_alpha=combo.rank, optimizer="adamw", mixed_precision=precision,
        gradient_checkpointing=combo.grad_checkpointing, compile_mode=_built_mode(combo), max_train_epochs=1, save_state_every_minutes=0,
        min_bucket_reso=min(256, combo.resolution),
    )  # fmt: skip; everything else at the trainer's defaults (caption dropout 0.1, clip 1.0, cosine)
    # one bucket holding the batch's items once per step (+1 so the epoch never ends: no epoch-end saves)
    samples = {(combo.resolution, combo.resolution): combo.batch * (total_steps + 1)}
    eff = derive(cfg, samples, Machine.detect() if device.type == "cuda" else Machine(),
                 NativeBackend.numbers)
    _reset_accelerate()
    accelerator = build_accelerator(precision)
    if accelerator.device.type != device.type:
        raise RuntimeError(f"accelerate chose {accelerator.device}, the bench wants {device}")
    dtype = weight_dtype(precision)
    transformer = build_transformer_for_bench(combo.model, accelerator.device, dtype, combo.grad_checkpointing, tmp)
    model, _, optimizer, scheduler = build_lora_training(cfg, eff, accelerator, transformer)

    base = accelerator.unwrap_model(model)
    context_length = REAL_CONTEXT_TOKENS if combo.model == "real" else _tiny_context_length()
    cache = fake_cache(combo.model, combo.batch, combo.resolution, base.config.text_embed_dim, context_length)
    sampler = BucketSampler((tuple(range(combo.batch)) * (total_steps + 1),), combo.batch, 1, cfg.seed)
    progress = TrainingProgress(total_steps=total_steps + 1, steps_per_epoch=sampler.steps_per_epoch, seed=cfg.seed)
    return Session(
        cfg=cfg, effective=eff, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler,
        cache=cache, generator=torch.Generator(device=accelerator.device).manual_seed(cfg.seed), progress=progress,
        output_dir=tmp / "out",
    )  # fmt: skip


def _built_mode(combo: Combo) -> str:
    """The compile mode the session is built with: a whole-model mode builds what it needs (cuda-graphs: a
    capturable optimizer); blocks are compiled after the eager FLOP-counting step (apply_compile_mode)."""
    return combo.compile_mode if combo.compile_mode in ("model", "cuda-graphs") else "none"


def _tiny_context_length() -> int:
    from anima_lora_flow.trainer.tiny import TINY_CONDITIONER

    return int(TINY_CONDITIONER["min_sequence_length"])


def _reset_accelerate() -> None:
    """accelerate keeps one process-wide state; each combination may need another mixed precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def cpu_sdpa_flop_mapping() -> dict:
    """FlopCounterMode knows the CUDA SDPA kernels but not the CPU flash kernel: count it by the same formulas."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    mapping = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in flop_counter.flop_registry:
        mapping[fwd] = lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v)
    if bwd is not None and bwd not in flop_counter.flop_registry:
        mapping[bwd] = lambda g, q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_backward_flop_count(g, q, k, v)
    return mapping


# --- running ------------------------------------------------------------------------------------------


class StepClock:
    """The trainer's stop_requested hook: marks the end of every optimizer step, stops after `stop_after`."""

    def __init__(self, device: torch.device, stop_after: int, timed_from: int | None = None):
        self.device, self.stop_after, self.timed_from = device, stop_after, timed_from
        self.count = 0
        self.marks: list = []  # CUDA events or perf_counter seconds, one per finished step
        self.wall: list[float] = []  # perf_counter after a sync at the start and the end of the timed region

    def start(self) -> None:
        self._mark()
        if self.timed_from == 0:
            self._sync_wall()

    def __call__(self) -> bool:
        self.count += 1
        self._mark()
        if self.timed_from is not None and self.count in (self.timed_from, self.stop_after):
            self._sync_wall()
        if self.count >= self.stop_after:
            raise _StopBench
        return False

    def _mark(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def _sync_wall(self) -> None:
        _sync(self.device)
        self.wall.append(time.perf_counter())

    def step_ms(self) -> list[float]:
        """Milliseconds of every step after `timed_from`."""
        _sync(self.device)
        first = self.timed_from or 0
        marks = self.marks[first:]
        if self.device.type == "cuda":
            return [a.elapsed_time(b) for a, b in itertools.pairwise(marks)]
        return [(b - a) * 1000 for a, b in itertools.pairwise(marks)]


def run_steps(session, clock: StepClock) -> None:
    from anima_lora_flow.trainer.loop import train

    session.stop_requested = clock
    clock.start()
    try:
        train(session)
    except _StopBench:
        pass
    else:
        raise RuntimeError("the trainer's loop ended before the bench's step count")


def run_combo(combo: Combo, device: torch.device, steps: int, warmup: int, peak_size: int, tmp: Path) -> Row:
    from anima_lora_flow.trainer.loop import weight_dtype
    from torch.utils.flop_counter import FlopCounterMode

    row = Row(combo=combo.label, device=_device_name(device))
    rss_before = _max_rss_bytes()
    session = None
    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        session = build_session(combo, device, 1 + warmup + steps, tmp)

        # 1) FLOPs of one full step (forward, loss, backward incl. GC recompute, optimizer), eager.
        counter = FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flop_mapping())
        with counter:
            run_steps(session, StepClock(device, stop_after=1))
        flops = counter.get_total_flops()

        # 2) warm-up (compiles here, after the eager FLOP count), then the timed steps.
        apply_compile_mode(session, combo.compile_mode, device)
        clock = StepClock(device, stop_after=warmup + steps, timed_from=warmup)
        run_steps(session, clock)
        times = clock.step_ms()

        q1, median, q3 = _quartiles(times)
        row.ms_step_median, row.ms_step_iqr = median, q3 - q1
        row.ms_step_mean = (clock.wall[-1] - clock.wall[0]) * 1000 / steps
        row.ms_image = median / combo.batch
        row.tflop_step = flops / 1e12
        if combo.model == "real" and combo.resolution in REFERENCE_TFLOP:
            row.tflop_ref = REFERENCE_TFLOP[combo.resolution][combo.grad_checkpointing] * combo.batch
        row.achieved_tflops = flops / (median / 1000) / 1e12
        peak_dtype = weight_dtype(PRECISIONS[combo.precision]) if device.type == "cuda" else torch.float32
        row.peak_tflops = matmul_peak_flops(device, peak_dtype, peak_size) / 1e12
        row.mfu = row.achieved_tflops / row.peak_tflops
        row.loss = session.progress.last_loss
        if device.type == "cuda":
            row.peak_mem_gib, row.mem_source = torch.cuda.max_memory_allocated(device) / 2**30, "cuda max allocated"
        else:
            delta = _max_rss_bytes() - rss_before
            row.peak_mem_gib, row.mem_source = (delta / 2**30, "ru_maxrss delta") if delta > 0 else (None, "n/a (rss peak not raised)")
    except Exception as e:  # noqa: BLE001 (deliberate) OOM, a precision the device lacks, a compile failure: one row, then go on
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        del session
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def apply_compile_mode(session, mode: str, device: torch.device) -> None:
    """Switch the built session to `mode` as the trainer runs it: blocks through the trainer's
    speed_up_transformer, model / cuda-graphs through trainer.compiled.loss_function (the loop's
    Session.loss_function), with the session's effective numbers saying the mode."""
    if mode == "none":
        return
    session.effective = session.effective.model_copy(update={"compile_mode": mode})
    if mode == "blocks":
        from anima_lora_flow.trainer.components import speed_up_transformer

        speed_up_transformer(session.accelerator.unwrap_model(session.model), compile_blocks=True)
        return
    from anima_lora_flow.trainer.compiled import loss_function

    session.loss_function = loss_function(mode, device, shapes=1)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError) as e:  # no CUDA here: the combinations will say so
            return f"cuda (unavailable: {type(e).__name__})"
    return f"cpu x{torch.get_num_threads()} threads"


# --- output -------------------------------------------------------------------------------------------

COLUMNS = [
    ("combination", 42), ("ms/step", 9), ("IQR", 7), ("mean", 9), ("ms/img", 9), ("peak GiB", 9),
    ("TFLOP", 8), ("ref", 6), ("TFLOP/s", 8), ("peak", 8), ("MFU", 6), ("loss", 7),
]  # fmt: skip


def format_table(rows: Sequence[Row]) -> str:
    def fmt(value, digits=1):
        if value is None:
            return "-"
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"

    header = " ".join(name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(COLUMNS))
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.error:
            lines.append(f"{r.combo.ljust(COLUMNS[0][1])} ERROR {r.error}")
            continue
        tflop_digits = 2 if (r.tflop_step or 0) >= 0.01 else 6
        cells = [
            r.combo, fmt(r.ms_step_median), fmt(r.ms_step_iqr), fmt(r.ms_step_mean), fmt(r.ms_image),
            fmt(r.peak_mem_gib, 2), fmt(r.tflop_step, tflop_digits), fmt(r.tflop_ref), fmt(r.achieved_tflops, 3),
            fmt(r.peak_tflops, 3), f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-", fmt(r.loss, 4),
        ]  # fmt: skip
        lines.append(" ".join(c.rjust(w) if i else c.ljust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    onoff = {"on": True, "off": False}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("tiny", "real"), default="real")
    p.add_argument("--resolution", type=int, nargs="+", default=[768])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--rank", type=int, nargs="+", default=[20])
    p.add_argument("--grad-checkpointing", choices=tuple(onoff), nargs="+", default=["on"])
    p.add_argument("--precision", choices=tuple(PRECISIONS), nargs="+", default=["bf16"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per combination")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them (after the FLOP-counting step)")
    p.add_argument("--compile", action="store_true", help="same as --compile-mode blocks (the trainer's --compile-blocks)")
    p.add_argument("--compile-mode", choices=("none", "blocks", "model", "cuda-graphs"), nargs="+", default=None,
                   help="the trainer's compile_mode, one row per mode (default: none)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--peak-size", type=int, default=None, help="matmul size for the peak (default 8192 GPU, 1024 CPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    args.grad_checkpointing = [onoff[v] for v in args.grad_checkpointing]
    args.compile_mode = args.compile_mode or (["blocks"] if args.compile else ["none"])
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak_size = args.peak_size or (8192 if device.type == "cuda" else 1024)
    combos = [
        Combo(args.model, res, batch, rank, gc_, precision, mode)
        for res, batch, rank, gc_, precision, mode in itertools.product(
            args.resolution, args.batch, args.rank, args.grad_checkpointing, args.precision, args.compile_mode
        )
    ]
    print(f"device: {_device_name(device)}; torch {torch.__version__}; {len(combos)} combination(s); "
          f"{args.warmup} warm-up + {args.steps} timed steps each", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="anima-bench-step-") as tmp:
        for combo in combos:
            row = run_combo(combo, device, args.steps, args.warmup, peak_size, Path(tmp))
            rows.append(row)
            print(f"  done: {combo.label}" + (f" (error: {row.error})" if row.error else ""), flush=True)
    print()
    print(format_table(rows))
    if args.model == "real":
        print("ref: anima-internals §C TFLOP/step (LoRA rank 16, batch 1 figure x batch); TFLOP: counted by FlopCounterMode")
    print(f"peak: measured {peak_size}^3 matmul TFLOP/s in the combination's dtype ({'fp32 on CPU' if device.type == 'cpu' else 'GPU'});"
          " MFU = TFLOP / median step time / peak")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if all(r.error is None for r in main()) else 1)
