"""Time the whole-model compilation (compile_mode model) per bucket shape: `python bench/bench_compile.py`.

Builds the tiny (default) or the real DiT with the trainer's LoRA, then calls the trainer's compiled
forward + loss (trainer.compiled.loss_function) and its backward once per bucket shape, timing each first
call (the compilation: dynamo, AOTAutograd, inductor's forward and backward kernels) and a second call at
the same shape (the compiled step itself). A shape seen before must not compile again: the script checks
that returning to the first bucket costs a step's time, not a compilation. It also prints the graph-break
count as `graph_breaks: N` (trainer.compiled.graph_breaks), the line bench/gpu_check.sh looks for.

    python bench/bench_compile.py                                # tiny model, CPU, 4 buckets
    python bench/bench_compile.py --model real --device cuda     # the real DiT (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

# Latent sides (h, w) of four buckets; the real ones are 768 px buckets of the usual aspect ratios.
TINY_BUCKETS = ((8, 8), (8, 12), (12, 8), (6, 10))
REAL_BUCKETS = ((96, 96), (80, 112), (112, 80), (72, 128))


def build_model(model: str, device: torch.device, dtype: torch.dtype, gradient_checkpointing: bool, rank: int, tmp: Path):
    from anima_lora_flow.trainer.lora import build_lora_model

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_step import build_transformer_for_bench

    transformer = build_transformer_for_bench(model, device, dtype, gradient_checkpointing, tmp)
    return build_lora_model(transformer, rank, rank, seed=0).to(device).train()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_seconds() -> float:
    t = os.times()  # this process and its finished children (inductor's compile workers)
    return t.user + t.system + t.children_user + t.children_system


def timed_step(loss_function, model, batch, objective, generator) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one forward + loss + backward; a busy machine stretches the wall time only."""
    from anima_lora_flow.trainer.loss import compute_loss

    device = batch["latents"].device
    _sync(device)
    start, cpu = time.perf_counter(), _cpu_seconds()
    loss = compute_loss(model, batch, objective, generator, loss_function)
    loss.backward()
    _sync(device)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main(argv: Sequence[str] | None = None) -> dict:
    from anima_lora_flow.trainer.compiled import graph_breaks, loss_function
    from anima_lora_flow.trainer.loop import weight_dtype
    from anima_lora_flow.trainer.loss import Objective

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "real"), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--grad-checkpointing", choices=("on", "off"), default="off")
    p.add_argument("--buckets", type=int, choices=(1, 2, 3, 4), default=4, help="how many of the four bucket shapes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = weight_dtype({"fp32": "no"}.get(args.precision, args.precision))
    buckets = (TINY_BUCKETS if args.model == "tiny" else REAL_BUCKETS)[: args.buckets]
    with tempfile.TemporaryDirectory(prefix="anima-bench-compile-") as tmp:
        model = build_model(args.model, device, dtype, args.grad_checkpointing == "on", args.rank, Path(tmp))
    text_dim, tokens = model.config.text_embed_dim, 16 if args.model == "tiny" else 512
    g = torch.Generator().manual_seed(0)
    batches = [{"latents": torch.randn(args.batch, 16, 1, h, w, generator=g).to(device),
                "context": torch.randn(args.batch, tokens, text_dim, generator=g).to(device)} for h, w in buckets]  # fmt: skip
    objective = Objective()
    generator = torch.Generator(device=device).manual_seed(0)

    breaks = graph_breaks(model, batches[0], objective)
    print(f"graph_breaks: {breaks}", flush=True)
    eager = [timed_step(loss_function("none", device), model, b, objective, generator)[0] for b in batches]
    compiled = loss_function("model", device, shapes=len(batches))
    first, first_cpu = zip(*(timed_step(compiled, model, b, objective, generator) for b in batches))
    second = [timed_step(compiled, model, b, objective, generator)[0] for b in batches]
    back_to_first = timed_step(compiled, model, batches[0], objective, generator)[0]
    result = {
        "device": str(device), "torch": torch.__version__, "model": args.model, "precision": args.precision,
        "batch": args.batch, "rank": args.rank, "grad_checkpointing": args.grad_checkpointing,
        "threads": torch.get_num_threads(), "graph_breaks": breaks, "buckets": [list(b) for b in buckets],
        "load_average": os.getloadavg(), "compile_s": first, "compile_cpu_s": first_cpu, "compiled_step_s": second, "eager_step_s": eager, "first_bucket_again_s": back_to_first,
    }  # fmt: skip
    for (h, w), c, cpu, s, e in zip(buckets, first, first_cpu, second, eager):
        print(f"bucket latent {h}x{w}: first call (compile) {c:.1f} s ({cpu:.1f} s CPU), compiled step {s * 1000:.1f} ms, "
              f"eager {e * 1000:.1f} ms")
    print(f"{len(buckets)} buckets: {sum(first):.1f} s ({sum(first_cpu):.1f} s CPU) of compilation in all, load average "
          f"{os.getloadavg()[0]:.1f}; the first bucket again: {back_to_first * 1000:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
