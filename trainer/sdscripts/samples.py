"""sd-scripts' own sample images and validation loss, reported as the native trainer reports them.

Sampling: the run's prompts (trainer/sample_plan.py resolves them for both backends: the prompt file or
a few dataset captions, every size, step count, seed and guidance decided) are written in sd-scripts'
prompt-file syntax and passed with the cadence (`sample_prompts`, `sample_every_n_epochs`). sd-scripts
writes `<output_dir>/sample/<name>_e<epoch:06d>_<prompt:02d>_<time>[_<seed>].png`
(library/anima_train_utils.py, 48d368fa); when it has finished a sampling point the console parser calls
`SampleCollector`, which draws those images into the same grid as the native backend and emits the
same `Samples` event.

The base row: a fresh session also passes `sample_at_first`, so sd-scripts samples before the first
step. Its LoRA's up-projections start at zero (networks/lora_flux.py), so those images are the base
model's own. A resumed session cannot make them (its LoRA is already trained), so its grids have the
LoRA row alone, and the title says so.
sd-scripts samples only at epochs that are multiples of the cadence: not at the run's end nor at a stop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ...config import TrainingConfig
from ...core.formatting import epoch_position
from ...core.sample_prompts import SamplePrompt, to_sd_scripts_line
from ...core.train_items import TrainItem
from ..events import Event, Log, Samples

log = logging.getLogger(__name__)

SAMPLE_FOLDER = "sample"  # sd-scripts' folder under its output_dir
PROMPT_FILE = "sample_prompts.txt"  # sd-scripts picks the parser by the suffix: .txt is one prompt per line
GRID_FOLDER = "samples"
BASE_EPOCH = 0  # sd-scripts names the sample_at_first images e000000


def run_prompts(config: TrainingConfig, items: Sequence[TrainItem]) -> list[SamplePrompt]:
    """The prompts this run samples, as the native trainer samples them; [] when sampling is off."""
    if not config.sample_every_n_epochs:
        return []
    from ..sample_plan import sample_prompts_for  # noqa: PLC0415 - only a run that samples needs it

    return [p for p in sample_prompts_for(config, items) if p.prompt.strip()]


def prompt_line(prompt: SamplePrompt) -> str:
    """One line sd-scripts reads back as this prompt (train_util.load_prompts / line_to_prompt_dict).

    sd-scripts skips a line whose first character is `#` and splits the line at every " --": a leading
    space keeps a caption such as "#1 fan art" a prompt, and a caption's own " --" loses a dash rather
    than becoming an option. Newlines in a caption would start another prompt.
    """
    text = " ".join(prompt.prompt.split()).replace(" --", " -")
    line = to_sd_scripts_line(replace(prompt, prompt=text))
    return " " + line if line.startswith("#") else line


def prompt_file_text(prompts: Sequence[SamplePrompt]) -> str:
    return "".join(prompt_line(p) + "\n" for p in prompts)


def sampling_settings(config: TrainingConfig, prompt_file: Path | None, *, fresh: bool) -> dict:
    """The training-TOML keys that turn sd-scripts' sampling on; {} without prompts."""
    if prompt_file is None or not config.sample_every_n_epochs:
        return {}
    settings = {"sample_prompts": str(prompt_file), "sample_every_n_epochs": int(config.sample_every_n_epochs)}
    if fresh:
        settings["sample_at_first"] = True  # the base row: see the module docstring
    return settings


_SAMPLE_NAME = r"_e(?P<epoch>\d{6})_(?P<index>\d{2,})_(?P<time>\d{14})(?:_\d+)?\.png"


def sample_files(sample_dir: Path, output_name: str, epoch: int) -> dict[int, Path]:
    """The newest image of each prompt sd-scripts wrote for `epoch` (an epoch sampled again keeps the last)."""
    pattern = re.compile(re.escape(output_name) + _SAMPLE_NAME)
    found: dict[int, tuple[str, Path]] = {}
    for path in Path(sample_dir).glob("*.png"):
        match = pattern.fullmatch(path.name)
        if match and int(match["epoch"]) == epoch:
            index = int(match["index"])
            if index not in found or match["time"] >= found[index][0]:
                found[index] = (match["time"], path)
    return {index: path for index, (_, path) in found.items()}


class SampleCollector:
    """Called by the console parser when sd-scripts finished a sampling point: the grid and its event.

    A failure here (an image missing or unreadable) becomes a Samples event with `error`: training goes on.
    """

    def __init__(self, prompts: Sequence[SamplePrompt], output_dir: Path, project_name: str, epochs: int | None = None):
        self.prompts = list(prompts)
        self.epochs = epochs
        self.output_dir = Path(output_dir)
        self.name = project_name
        self.base: list[Path] = []
        self.base_reported = False  # the runner stores the base row once, from the first event that lists it

    @property
    def sample_dir(self) -> Path:
        return self.output_dir / SAMPLE_FOLDER

    def __call__(self, step: int, epoch: int | None) -> list[Event]:
        try:
            return self._collect(step, BASE_EPOCH if epoch is None else epoch)
        except Exception as exc:  # a sample grid never stops the training
            log.warning("sd-scripts sample grid at step %s failed: %s", step, exc, exc_info=True)
            return [Samples(path=None, step=step, epoch=epoch, prompts=self._texts(), error=f"{type(exc).__name__}: {exc}")]

    def _collect(self, step: int, epoch: int) -> list[Event]:
        files = sample_files(self.sample_dir, self.name, epoch)
        missing = [i for i in range(len(self.prompts)) if i not in files]
        if missing:
            numbers = ", ".join(str(i + 1) for i in missing)
            return [Samples(path=None, step=step, epoch=epoch, prompts=self._texts(),
                            error=f"sd-scripts wrote no sample image for prompt {numbers} at epoch {epoch} "
                                  f"(in {self.sample_dir}); its log says why")]  # fmt: skip
        ordered = [files[i] for i in range(len(self.prompts))]
        if epoch == BASE_EPOCH:
            self.base = ordered
            return [Log(message=f"sd-scripts sampled the base model (its LoRA starts at zero): {len(ordered)} images")]
        return [self._grid(step, epoch, ordered)]

    def _grid(self, step: int, epoch: int, lora: list[Path]) -> Samples:
        from ..sample_grid import sample_grid  # noqa: PLC0415 - Pillow only once a grid is drawn

        base = self.base
        # The native title's wording; what the base row is (or why there is none) follows, kept short:
        # a grid of one prompt is about 40 characters wide.
        title = f"{self.name}: step {step}, {epoch_position(epoch, 0, self.epochs)}, sd-scripts"
        title += ", base = its step-0 sample" if base else ", no base row (resumed)"
        opened = [_load(p) for p in base] if base else []
        grid = sample_grid(opened, [_load(p) for p in lora], self._texts(), title)
        folder = self.output_dir / GRID_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-step{step:08d}.png"
        grid.save(path, "PNG")
        listed = [] if self.base_reported else [str(p) for p in base]
        self.base_reported = self.base_reported or bool(base)
        return Samples(path=str(path), step=step, epoch=epoch, prompts=self._texts(), base=listed)

    def _texts(self) -> list[str]:
        return [p.prompt for p in self.prompts]


def _load(path: Path):
    from PIL import Image  # noqa: PLC0415

    with Image.open(path) as img:
        img.load()
        return img.copy()
