"""Fixtures for the native trainer: one tiny model per session and a handful of tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anima_lora_flow.core.train_items import TrainItem
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


@pytest.fixture(scope="session")
def tiny_inputs():
    """A function: fixed DiT inputs for the tiny model (batch 2 by default), in `dtype`."""

    def make(batch: int = 2, dtype=None) -> dict:
        import torch

        dtype = dtype or torch.float32
        g = torch.Generator().manual_seed(0)
        return dict(
            hidden_states=torch.randn(batch, 16, 1, 8, 8, generator=g).to(dtype),
            timestep=torch.tensor([0.3, 0.8][:batch] + [0.5] * max(0, batch - 2)).to(dtype),
            encoder_hidden_states=torch.randn(batch, 16, 32, generator=g).to(dtype),
            padding_mask=torch.zeros(1, 1, 8, 8, dtype=dtype),
            return_dict=False,
        )

    return make


@pytest.fixture(scope="session")
def random_lora_model(tiny_model):
    """A function: the tiny DiT with a peft LoRA whose A and B are random, standing in for a trained one."""

    def make(rank: int, alpha: float):
        import torch

        from anima_lora_flow.trainer.components import build_transformer
        from anima_lora_flow.trainer.lora import build_lora_model

        model = build_lora_model(build_transformer(tiny_model, torch.float32, False), rank, alpha, seed=0)
        with torch.no_grad():  # random B (instead of zeros) makes every key matter
            g = torch.Generator().manual_seed(1)
            for name, param in model.named_parameters():
                if ".lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.2)
        return model.eval()

    return make
