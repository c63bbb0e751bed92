"""The exported LoRA file is what ComfyUI and diffusers load: proven through diffusers' own converter."""

from __future__ import annotations

import re

import torch
from diffusers import CosmosTransformer3DModel
from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_anima_lora_to_diffusers
from safetensors import safe_open

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.effective import Machine, derive
from anima_lora_flow.trainer.native import NativeBackend
from anima_lora_flow.trainer.components import build_transformer
from anima_lora_flow.trainer.lora import (
    DIFFUSERS_TO_ORIGINAL,
    adapter_state_dict,
    from_comfy_state_dict,
    load_lora_file,
    lora_metadata,
    save_lora_file,
    to_comfy_state_dict,
)

NATIVE = NativeBackend.numbers

RANK, ALPHA = 4, 2.0  # scale 0.5, so a missing or doubled fold would show


def test_export_loads_in_diffusers_and_matches(tiny_model, tmp_path, tiny_inputs, random_lora_model):
    model = random_lora_model(RANK, ALPHA)
    with torch.no_grad():
        expected = model(**tiny_inputs())[0]
    cfg = TrainingConfig(dataset="x", network_dim=RANK, network_alpha=ALPHA, resolution=256)
    path = save_lora_file(
        tmp_path / "tiny.safetensors",
        to_comfy_state_dict(adapter_state_dict(model), cfg.network_scale, torch.float32),
        lora_metadata(cfg, derive(cfg, {(256, 256): 5}, Machine(), NATIVE), optimizer="torch.optim.adamw.AdamW()", steps=5, epoch=1,
                      total_steps=5, dataset_fingerprint="abc"),
    )

    state = load_lora_file(path)
    layers = CosmosTransformer3DModel.load_config(tiny_model / "transformer")["num_layers"]
    assert len(state) == 2 * 10 * layers
    pattern = re.compile(r"^diffusion_model\.blocks\.\d+\.(" + "|".join(map(re.escape, DIFFUSERS_TO_ORIGINAL.values())) + r")\.lora_[AB]\.weight$")
    assert all(pattern.match(k) for k in state), sorted(state)[:4]
    assert not any("alpha" in k for k in state)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "anima" and meta["ss_steps"] == "5"
    assert meta["modelspec.architecture"] == "anima-preview/lora"

    # diffusers' own route: rename with its converter, then load into a fresh transformer.
    fresh = build_transformer(tiny_model, torch.float32, False)
    fresh.load_lora_adapter(_convert_non_diffusers_anima_lora_to_diffusers(state), prefix="transformer", adapter_name="x")
    with torch.no_grad():
        loaded = fresh.eval()(**tiny_inputs())[0]
        base = build_transformer(tiny_model, torch.float32, False).eval()(**tiny_inputs())[0]
    assert (base - expected).abs().max().item() > 1e-2  # the LoRA really changes the output
    assert (loaded - expected).abs().max().item() < 1e-5

    # and a manual merge W + B @ A of the file's tensors gives the same function
    merged = build_transformer(tiny_model, torch.float32, False).eval()
    modules = dict(merged.named_modules())
    for key, a in state.items():
        if key.endswith("lora_A.weight"):
            b = state[key.replace("lora_A", "lora_B")]
            block, original = re.match(r"diffusion_model\.blocks\.(\d+)\.(.+)\.lora_A\.weight", key).groups()
            target = {v: k for k, v in DIFFUSERS_TO_ORIGINAL.items()}[original]
            modules[f"transformer_blocks.{block}.{target}"].weight.data += b @ a
    with torch.no_grad():
        assert (merged(**tiny_inputs())[0] - expected).abs().max().item() < 1e-5


def test_comfy_round_trip_restores_peft_weights(tiny_model, random_lora_model):
    peft_state = adapter_state_dict(random_lora_model(RANK, ALPHA))
    back = from_comfy_state_dict(to_comfy_state_dict(peft_state, 0.5, torch.float32), 0.5)
    assert back.keys() == peft_state.keys()
    assert all(torch.allclose(back[k], peft_state[k]) for k in back)
