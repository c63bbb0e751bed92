"""Which sample images a run makes: every prompt with its size, steps, seed and guidance decided.

Light on purpose (no torch): the preflight refuses a bad prompt file from here before any download,
and the trainer resolves the same prompts from here, so what was checked is what is sampled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..config import TrainingConfig
from ..core.buckets import Bucket, make_buckets
from ..core.sample_prompts import SamplePrompt, read_sample_prompts
from ..core.train_items import TrainItem
from ..errors import UserInputError, setting

DEFAULT_STEPS = 20  # a prompt's --s overrides it; enough for a recognisable image, cheap beside an epoch
DEFAULT_GUIDANCE = 4.0  # diffusers' Anima guider default
DATASET_PROMPTS = 4  # captions sampled when no prompt file is given: one grid stays readable
PIPELINE_MULTIPLE = 16  # the VAE's 8x times the DiT's 2x2 patches: the Anima pipeline refuses other sizes
# The base model's sample images, in the work dir and (the same names) in the run store's samples/base/:
# made once per run by the trainer, fetched back by the runner before a later session starts.
BASE_SAMPLES_DIR = "cache/samples/base"
STORE_BASE_SAMPLES = "samples/base"


def run_buckets(cfg: TrainingConfig) -> list[Bucket]:
    return make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps)


def sample_size(prompt: SamplePrompt, cfg: TrainingConfig, line: int | None = None) -> Bucket:
    """(width, height) of a prompt: its --w/--h, a missing side from the bucket of the given one, else the square bucket.

    A size fits the run when it could be one of its buckets' sizes: sides multiples of the bucket step
    between the smallest and largest bucket side, and no more pixels than resolution² (the model is
    taught at most that; a smaller preview is fine and faster).

    Raises:
        UserInputError: the size does not fit the run's buckets.
    """
    buckets = run_buckets(cfg)
    step, area = cfg.bucket_reso_steps, cfg.resolution * cfg.resolution
    square = (cfg.resolution // step) * step
    width, height = prompt.width, prompt.height
    if width is None and height is None:
        return square, square
    if height is None:
        height = next((h for w, h in buckets if w == width), None)
    elif width is None:
        width = next((w for w, h in buckets if h == height), None)
    if width is not None and height is not None and all(
        side % step == 0 and side % PIPELINE_MULTIPLE == 0 and cfg.min_bucket_reso <= side <= cfg.max_bucket_reso
        for side in (width, height)
    ) and width * height <= area:
        return width, height
    asked = " ".join(f"--{k} {v}" for k, v in (("w", prompt.width), ("h", prompt.height)) if v is not None)
    ratio = (prompt.width or square) / (prompt.height or square)
    nearest = min(buckets, key=lambda b: (abs(b[0] / b[1] - ratio), -(b[0] * b[1])))
    where = f" line {line}" if line is not None else ""
    raise UserInputError(
        f"{setting('sample_prompts')}: {cfg.sample_prompts}{where}: {asked} is not a size this run trains at "
        f"(sides multiples of {step} from {cfg.min_bucket_reso} to {cfg.max_bucket_reso}, at most "
        f"{setting('resolution', cfg.resolution)} squared pixels); the nearest bucket of that shape is "
        f"--w {nearest[0]} --h {nearest[1]}",
        field="sample_prompts",
    )


def check_sample_prompts(cfg: TrainingConfig) -> list[SamplePrompt]:
    """The prompt file's prompts, each size checked against the buckets; [] without a file.

    Raises:
        UserInputError: the file cannot be read, has no prompt or a bad line, or asks for a size outside the buckets.
    """
    if not cfg.sample_prompts:
        return []
    prompts = read_sample_prompts(cfg.sample_prompts)
    lines = _prompt_lines(cfg.sample_prompts)
    for prompt, line in zip(prompts, lines, strict=False):
        sample_size(prompt, cfg, line)
    return prompts


def dataset_prompts(items: Sequence[TrainItem], seed: int, count: int = DATASET_PROMPTS) -> list[SamplePrompt]:
    """A few distinct captions of the dataset, chosen by the seed (the same on every resume), each at its image's bucket."""
    buckets: dict[str, tuple[int, int]] = {}
    for item in items:
        if item.caption.strip():
            buckets.setdefault(item.caption, tuple(item.bucket))
    chosen = sorted(buckets, key=lambda c: hashlib.sha256(f"{seed}\0{c}".encode()).hexdigest())[:count]
    if not chosen:  # no captions at all: what the LoRA draws unprompted
        return [SamplePrompt("", width=items[0].bucket[0], height=items[0].bucket[1])] if items else []
    return [SamplePrompt(c, width=buckets[c][0], height=buckets[c][1]) for c in chosen]


def sample_prompts_for(cfg: TrainingConfig, items: Sequence[TrainItem]) -> list[SamplePrompt]:
    """Every prompt of the run with nothing left to a default: size, steps, seed (the run's seed + its place), guidance.

    Raises:
        UserInputError: as check_sample_prompts.
    """
    prompts = check_sample_prompts(cfg) or dataset_prompts(items, cfg.seed)
    resolved = []
    for index, prompt in enumerate(prompts):
        width, height = (prompt.width, prompt.height) if not cfg.sample_prompts else sample_size(prompt, cfg)
        resolved.append(replace(
            prompt, width=width, height=height, steps=prompt.steps or DEFAULT_STEPS,
            seed=cfg.seed + index if prompt.seed is None else prompt.seed,
            guidance=DEFAULT_GUIDANCE if prompt.guidance is None else prompt.guidance,
        ))  # fmt: skip
    return resolved


def _prompt_lines(path: str) -> list[int]:
    """The line number of each prompt in the file (parse_sample_prompts skips blank and # lines)."""
    text = Path(path).read_text(encoding="utf-8").lstrip("\ufeff")
    return [n for n, raw in enumerate(text.splitlines(), start=1) if raw.strip() and not raw.strip().startswith("#")]
