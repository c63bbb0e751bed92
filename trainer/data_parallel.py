"""Data-parallel training on several GPUs (Kaggle's 2x T4): one trainer process per GPU.

Each optimizer step's micro-batches are dealt out to the processes; accelerate wraps the model in
DDP, which averages the LoRA gradients. Only process 0 writes files and events.

The processes are started here rather than by `torchrun`/`accelerate launch` because the stop
protocol needs two things those launchers do not give: the trainers' own exit code (torchrun turns
every worker failure into 1, so "stopped with a state saved" (3) would read as a crash), and time to
finish the step and save when SIGTERM arrives (torchrun answers SIGTERM by killing its workers
after its own timeout). Everything inside the processes is accelerate's: rendezvous from the
standard environment variables, DDP, collectives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence

from ..core.processes import free_port

Group = list[list[int]]

# Exit codes of `python -m anima_lora_flow.trainer`, merged over the processes by `merge_exit_codes`.
EXIT_DONE, EXIT_STOPPED = 0, 3
WORKER_ENV = "ANIMA_LORA_WORKER"  # set in each started process so it trains instead of launching again


def shard(group_size: int, num_processes: int, rank: int) -> list[tuple[int, float]]:
    """(index, loss weight) of each micro-batch of one optimizer step that process `rank` runs.

    Process `rank` takes every `num_processes`-th micro-batch. A short last group is padded by
    repeating its first micro-batches, so every process runs the same number of forward/backward
    passes (DDP's gradient all-reduce needs all of them) and no GPU idles. A repeat keeps its
    original's index, so it draws the same noise (loop.micro_batch_seed), and each copy's loss weight
    is divided by its number of copies: after DDP's mean over the processes, the gradient is the mean
    over the group's micro-batches, exactly what one process accumulating the group computes.
    """
    size = -(-group_size // num_processes) * num_processes
    padded = [i % group_size for i in range(size)]
    return [(i, num_processes / (group_size * padded.count(i))) for i in padded[rank::num_processes]]


def shard_group(group: Group, num_processes: int, rank: int) -> Group:
    """This process's micro-batches of one optimizer step (see shard)."""
    return [group[i] for i, _ in shard(len(group), num_processes, rank)]


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def worker_env(base: dict[str, str], rank: int, num_processes: int, port: int) -> dict[str, str]:
    """The torch.distributed environment accelerate reads (the same names torchrun sets)."""
    return {
        **base, WORKER_ENV: "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(num_processes),
        "LOCAL_WORLD_SIZE": str(num_processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": base.get("OMP_NUM_THREADS", "1"),
    }  # fmt: skip


def merge_exit_codes(codes: Sequence[int]) -> int:
    """One code for the run: the first failure, else 3 if any process stopped with a state, else 0."""
    failures = [c for c in codes if c not in (EXIT_DONE, EXIT_STOPPED)]
    if failures:
        return failures[0] if failures[0] > 0 else 128 - failures[0]  # killed by signal N: 128 + N, as a shell says
    return EXIT_STOPPED if EXIT_STOPPED in codes else EXIT_DONE


def launch_workers(cmd: Sequence[str], num_processes: int, *, poll_s: float = 0.1) -> int:
    """Run `cmd` once per process and return the merged exit code.

    The workers stay in this process's group, so a stop sent to the group (the supervisor's SIGTERM,
    a terminal's Ctrl-C) reaches each of them directly; this launcher only waits for them. When one
    worker fails, the others are killed at once: they would block forever in their next collective,
    and a state cannot be saved without every process taking part.
    """
    port = free_port()
    base = dict(os.environ)
    # Signals are for the workers; the launcher must outlive them to report their exit code.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen] = []
    try:
        procs = [subprocess.Popen(list(cmd), env=worker_env(base, r, num_processes, port)) for r in range(num_processes)]
        while True:
            codes = [p.poll() for p in procs]
            if None not in codes or any(c not in (None, EXIT_DONE, EXIT_STOPPED) for c in codes):
                break
            time.sleep(poll_s)
        return merge_exit_codes([p.returncode for p in procs if p.poll() is not None])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
