"""Wall time of the quick commands on a generated 20-image dataset: `python bench/bench_cli.py [RUNS]`.

Times `anima-lora validate`, `plan` and `train --dry-run` as a user runs them (a new process each, so
imports count), RUNS times each (default 5), and prints the median and the spread. The target is under
2 s each; none of them starts a Prefect server or, without a GPU device, imports torch.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from anima_lora_flow.trainer.tiny import build_tiny_model

TAGS = ["1girl", "solo", "smile", "long hair", "blue eyes", "outdoors", "sky", "dress", "looking at viewer", "upper body"]


def generate(root: Path, count: int = 20) -> None:
    noise = Image.merge("RGB", [Image.effect_noise((96, 96), 60 + 20 * c) for c in range(3)]).resize((768, 768))
    for i in range(count):
        image = noise.copy()
        image.paste((i * 12, 255 - i * 12, 128), (0, 0, 256, 256))  # each image distinct
        image.save(root / f"img_{i:02d}.png", compress_level=1)
        (root / f"img_{i:02d}.txt").write_text(", ".join(TAGS[i % 5 : i % 5 + 5]), encoding="utf-8")


def commands(root: Path) -> dict[str, list[str]]:
    dataset, work = str(root / "dataset"), str(root / "work")
    # --models-dir: without a GPU, train and plan refuse the 5.6 GB model; the demo's tiny model is what a
    # CPU run uses (its tokenizers also count the caption tokens, as the real model's would).
    common = ["--storage", str(root / "runs"), "--work-dir", work, "--models-dir", str(root / "models")]
    return {
        "validate": ["validate", dataset, "--work-dir", work],
        "plan": ["plan", dataset, *common],
        "train --dry-run": ["train", "--dataset", dataset, *common, "--dry-run"],
    }


def time_command(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; CPU time barely moves when other work shares the machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "anima_lora_flow.cli", *argv], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"`anima-lora {' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory(prefix="anima-bench-cli-") as tmp:
        root = Path(tmp)
        (root / "dataset").mkdir()
        generate(root / "dataset")
        build_tiny_model(root / "models")
        env = {**os.environ, "ANIMA_LORA_CACHE": str(root / "cache")}
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'command':<18} {'first':>8} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8}   (wall times; then {runs} runs, "
              "a new process each; cpu: median CPU seconds)")
        for name, argv in commands(root).items():
            first, _ = time_command(argv, env)  # shown apart: the first run also writes the project folder
            walls, cpus = zip(*(time_command(argv, env) for _ in range(runs)))
            print(f"{name:<18} {first:>7.2f}s {statistics.median(walls):>7.2f}s {min(walls):>7.2f}s {max(walls):>7.2f}s "
                  f"{statistics.median(cpus):>7.2f}s")


if __name__ == "__main__":
    main()
