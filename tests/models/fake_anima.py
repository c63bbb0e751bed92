"""Tiny stand-ins for the two Anima repos, served by hub_server.FakeHub."""

from __future__ import annotations

import hashlib

from hub_server import FakeRepo

from anima_lora_flow.core import known_models

DIT_PREVIEW = "split_files/diffusion_models/anima-preview.safetensors"
DIT_BASE = "split_files/diffusion_models/anima-base-v1.0.safetensors"


def blob(name: str, size: int = 3000) -> bytes:
    """Deterministic bytes standing in for a weights file."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def diffusers_repo() -> FakeRepo:
    files = {"README.md": b"# not needed", "model_index.json": b'{"_class_name": "Anima"}'}
    weights = set()
    for sub in known_models.DIFFUSERS_SUBFOLDERS:
        files[f"{sub}/config.json"] = b'{"tiny": true}'
        files[f"{sub}/diffusion_pytorch_model.safetensors"] = blob(sub)
        weights.add(f"{sub}/diffusion_pytorch_model.safetensors")
    return FakeRepo(files, lfs=weights)


def single_file_repo() -> FakeRepo:
    files = {
        DIT_BASE: blob("dit-base", 5000),
        DIT_PREVIEW: blob("dit-preview", 5000),
        known_models.TEXT_ENCODER.filename: blob("te", 4000),
        known_models.VAE.filename: blob("vae", 2000),
        "README.md": b"readme",
    }
    return FakeRepo(files, lfs={DIT_BASE, DIT_PREVIEW, known_models.TEXT_ENCODER.filename, known_models.VAE.filename})
