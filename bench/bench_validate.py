"""Time the dataset validation of a generated 2,000-image dataset: `python bench/bench_validate.py [N]`.

Images are 512-1280 px JPEG (3/4) and PNG (1/4) with a smooth noise texture, one caption each.
Prints the generation and validation times; the target is under 30 s on a 2-core machine.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from anima_lora_flow.dataset.validate import validate_folder

TAGS = ["1girl", "solo", "smile", "long hair", "blue eyes", "outdoors", "sky", "dress", "looking at viewer", "upper body"]


def generate(root: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    # Low-resolution noise scaled up: textured like a photo, yet cheap to encode.
    noise = Image.merge("RGB", [Image.effect_noise((160, 160), 60 + 20 * c) for c in range(3)]).resize((1280, 1280))
    for i in range(count):
        width, height = rng.randrange(512, 1281, 32), rng.randrange(512, 1281, 32)
        image = noise.crop((0, 0, width, height))
        image.paste((i % 16 * 16, i // 16 % 16 * 16, i // 256 * 30), (0, 0, width // 3, height // 3))  # colours far enough apart that JPEG keeps every image distinct
        ext = ".jpg" if i % 4 else ".png"
        image.save(root / f"img_{i:05d}{ext}", quality=90, compress_level=1)
        (root / f"img_{i:05d}.txt").write_text(", ".join(rng.sample(TAGS, 5)), encoding="utf-8")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory(prefix="anima-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate(root, count)
        size = sum(p.stat().st_size for p in root.iterdir()) / 1e6
        print(f"generated {count} images ({size:.0f} MB) in {time.perf_counter() - start:.1f} s")
        start, cpu = time.perf_counter(), time.process_time()
        report = validate_folder(root, resolution=768)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        # The CPU time tells a busy shared machine (wall >> cpu / cores) from a slow validator.
        print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"validated {report.trainable_count} trainable images in {elapsed:.1f} s wall, {cpu:.1f} s CPU "
              f"({len(report.problems)} problems, {len(report.warnings)} warnings, {len(report.bucket_histogram)} buckets)")
        for issue in report.problems[:5]:
            print(f"  problem: {issue.file}: {issue.reason}")


if __name__ == "__main__":
    main()
