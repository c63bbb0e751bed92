"""Sample grids where the user looks: a markdown artifact body with the image itself, and the notebook cell."""

from __future__ import annotations

from pathlib import Path

from ..errors import in_notebook_kernel
from ..trainer.events import Samples
from .artifacts import image_markdown

GRID_MAX_SIDE = 1600  # four columns and their labels stay readable; as JPEG the artifact stays a few hundred kB


def samples_markdown(event: Samples, project: str) -> str:
    """The Prefect artifact's body: the grid embedded (a data: JPEG the UI shows), or why sampling failed."""
    where = f"step {event.step}" + (f", epoch {event.epoch}" if event.epoch is not None else "")
    if event.path is None:
        return f"### {project}: sampling at {where} failed\n\n`{event.error}`\n\nTraining went on; the LoRA is unaffected."
    prompts = "\n".join(f"{i}. {prompt or '(empty prompt)'}" for i, prompt in enumerate(event.prompts, start=1))
    image = image_markdown(Path(event.path), f"{project} samples at {where}", max_side=GRID_MAX_SIDE, photo=True)
    return f"### {project}: samples at {where}\n\nTop row: the base model; bottom row: with the LoRA.\n\n{image}\n\n{prompts}\n"


def show_in_notebook(event: Samples) -> bool:
    """Display the grid in the running notebook cell; False outside a notebook kernel or without a grid."""
    if event.path is None or not in_notebook_kernel():
        return False
    from IPython.display import Image, display

    display(Image(filename=event.path))
    return True
