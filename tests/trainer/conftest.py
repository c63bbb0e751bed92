"""Fixtures for the native trainer: one tiny model per session and a handful of tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.dataset.items import TrainItem
from anima_lora_flow.trainer.tiny import build_tiny_model

CAPTIONS = ["1girl, solo, smile, blue hair", "1boy, short hair, school uniform", "cat ears, red eyes, portrait"]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and the CI box is shared: one thread avoids oversubscription."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "anima-tiny", seed=0)


def make_images(folder: Path, n: int = 3) -> list[Path]:
    """Random images: one RGBA (alpha must flatten on white) and sizes that need a cover-resize."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        size = (256, 256) if i % 2 == 0 else (300, 200)
        mode = "RGBA" if i == 1 else "RGB"
        array = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(array, mode).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def items(tmp_path) -> list[TrainItem]:
    paths = make_images(tmp_path / "images")
    return [TrainItem(p, CAPTIONS[i % len(CAPTIONS)], (256, 256), repeats=1) for i, p in enumerate(paths)]


@pytest.fixture
def tiny_config():
    """A function: TrainingConfig fields for a seconds-long CPU run, with overrides."""
    return _tiny_config


def _tiny_config(**overrides) -> dict:
    base = dict(
        project_name="tiny", dataset="unused", resolution=256, network_dim=4, network_alpha=2, learning_rate=1e-3,
        max_train_epochs=2, batch_size=1, optimizer="adamw", lr_warmup_steps=2, gradient_checkpointing=False,
        save_every_n_epochs=1, save_state_every_minutes=0, caption_dropout=0.3, mixed_precision="auto",
    )  # fmt: skip
    base.update(overrides)
    return base
