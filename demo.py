"""The demo: a tiny random Anima model and a small generated dataset, trained through the real flow."""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .config import TrainingConfig

_TAGS = ["1girl", "solo", "long hair", "short hair", "smile", "blue eyes", "red eyes", "outdoors", "sky", "flower"]


def make_demo_dataset(dest: Path, n_images: int = 6, seed: int = 0) -> Path:
    """Write `n_images` simple drawings with tag captions (square and wide, so two buckets)."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        size = (256, 256) if i % 3 else (384, 256)
        hue = rng.random()
        background = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.35, 0.95))
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.randrange(size[0] - 40), rng.randrange(size[1] - 40)
            color = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.8, 0.7))
            draw.ellipse([x0, y0, x0 + rng.randrange(20, 120), y0 + rng.randrange(20, 120)], fill=color)
        image.save(dest / f"img_{i:02d}.png")
        tags = ["demochar", *rng.sample(_TAGS, 3)]
        (dest / f"img_{i:02d}.txt").write_text(", ".join(tags), encoding="utf-8")
    return dest


# Two prompts at the demo's one bucket, 4 steps: a grid in seconds on a CPU (the tiny model's images are noise).
DEMO_PROMPTS = """\
# The demo's sample prompts, one per line, with sd-scripts' options (--s steps, --d seed, --w/--h size...).
demochar, 1girl, solo, smile --s 4 --d 1
demochar, outdoors, sky, flower --s 4 --d 2
"""


def demo_config(
    work_dir: Path | None = None, *, storage: str | None = None, epochs: int | None = None, restart: bool = False
) -> TrainingConfig:
    """Build (once) the tiny model and dataset, and return a config that trains on them in minutes on CPU."""
    from .trainer.tiny import build_tiny_model  # noqa: PLC0415 - pulls in torch and diffusers

    # Everything (model, dataset, caches, run store) stays under one folder in the current directory.
    work_dir = (work_dir or Path("anima-demo")).absolute()
    model_dir = work_dir / "tiny-anima"
    if not (model_dir / "model_index.json").exists():
        build_tiny_model(model_dir, seed=0)
    dataset_dir = work_dir / "dataset"
    if not any(dataset_dir.glob("*.png")):
        make_demo_dataset(dataset_dir)
    prompts = work_dir / "sample-prompts.txt"
    if not prompts.exists():
        prompts.write_text(DEMO_PROMPTS, encoding="utf-8")
    return TrainingConfig(
        project_name="demo",
        dataset=str(dataset_dir),
        storage=storage or str(work_dir / "runs"),
        work_dir=str(work_dir / "work"),
        models_dir=str(model_dir),
        network_dim=4,
        network_alpha=4,
        learning_rate=1e-3,
        max_train_epochs=epochs or 2,
        repeats=2,
        resolution=256,
        lr_warmup_steps=2,
        optimizer="adamw",
        mixed_precision="no",
        gradient_checkpointing=False,
        save_every_n_epochs=1,
        save_state_every_minutes=0,
        # A grid every 2 epochs and at the end: base model above, LoRA below (README, "Sample images").
        sample_every_n_epochs=2,
        sample_prompts=str(prompts),
        restart=restart,
    )
