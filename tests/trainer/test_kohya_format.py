"""The optional kohya-format LoRA (`lora_unet_*`, unscaled down/up plus alpha) is the same update as the comfy file.

diffusers 0.42 has no kohya route for Anima (its converter only renames `diffusion_model.*`), so the function-level
proof here is a kohya-style merge (W + up @ down * alpha / rank, sd-scripts' LoRAInfModule.merge_to) and a round
trip back into a peft model, each compared with the trained peft model's output.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import CosmosTransformer3DModel
from diffusers.loaders.lora_pipeline import AnimaLoraLoaderMixin
from safetensors import safe_open

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.effective import Machine, derive
from anima_lora_flow.trainer.native import NativeBackend
from anima_lora_flow.trainer.components import build_transformer
from anima_lora_flow.core.lora_files import epoch_of, kohya_name
from anima_lora_flow.trainer.lora import (
    DIFFUSERS_TO_ORIGINAL,
    ORIGINAL_TO_DIFFUSERS,
    adapter_state_dict,
    build_lora_model,
    from_kohya_state_dict,
    kohya_metadata,
    load_adapter_state_dict,
    load_lora_file,
    lora_metadata,
    save_lora_file,
    to_comfy_state_dict,
    to_kohya_state_dict,
)

NATIVE = NativeBackend.numbers

RANK, ALPHA = 4, 3.0  # scale 0.75: a dropped, doubled or folded-twice alpha would show
KOHYA_KEY = re.compile(r"^lora_unet_blocks_(\d+)_(\w+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _num_layers(tiny_model) -> int:
    return CosmosTransformer3DModel.load_config(tiny_model / "transformer")["num_layers"]


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory, tiny_inputs, random_lora_model):
    """The peft model, its output, and both files as the trainer would write them (fp32)."""
    model = random_lora_model(RANK, ALPHA)
    with torch.no_grad():
        expected = model(**tiny_inputs())[0]
    cfg = TrainingConfig(dataset="x", network_dim=RANK, network_alpha=ALPHA, resolution=256)
    eff = derive(cfg, {(256, 256): 5}, Machine(), NATIVE)
    meta = lora_metadata(cfg, eff, optimizer="torch.optim.adamw.AdamW()", steps=5, epoch=1, total_steps=5, dataset_fingerprint="abc")
    peft_state = adapter_state_dict(model)
    comfy = save_lora_file(
        tmp_path_factory.mktemp("lora") / "tiny-000001.safetensors",
        to_comfy_state_dict(peft_state, cfg.network_scale, torch.float32),
        meta,
    )
    kohya = save_lora_file(comfy.with_name(kohya_name(comfy.name)), to_kohya_state_dict(peft_state, cfg.network_alpha, torch.float32), kohya_metadata(meta))
    return dict(model=model, expected=expected, peft_state=peft_state, comfy=comfy, kohya=kohya, cfg=cfg)


def test_kohya_file_sits_beside_the_main_one_and_is_no_epoch_lora():
    assert kohya_name("tiny-000002.safetensors") == "tiny-000002.kohya.safetensors"
    assert kohya_name("my.lora.safetensors") == "my.lora.kohya.safetensors"
    # epoch pruning keys on `<project>-NNNNNN.safetensors`: the kohya copy is pruned with its LoRA, not as one
    assert epoch_of("tiny", "tiny-000002.safetensors") == 2
    assert epoch_of("tiny", kohya_name("tiny-000002.safetensors")) is None and epoch_of("tiny", "tiny.safetensors") is None


def test_keys_follow_sd_scripts_naming_and_cover_every_module(files, tiny_model):
    state = load_lora_file(files["kohya"])
    layers = _num_layers(tiny_model)
    assert len(state) == 3 * 10 * layers
    modules = {}
    for key in state:
        match = KOHYA_KEY.match(key)
        assert match, key
        block, module, part = match.groups()
        modules.setdefault((int(block), module), set()).add(part)
    expected_modules = {o.replace(".", "_") for o in DIFFUSERS_TO_ORIGINAL.values()}
    assert set(modules) == {(i, m) for i in range(layers) for m in expected_modules}
    assert all(parts == {"lora_down.weight", "lora_up.weight", "alpha"} for parts in modules.values())
    # spelled out once, as sd-scripts' docs and anima-internals §A4 show them
    assert {"lora_unet_blocks_0_self_attn_q_proj.lora_down.weight", "lora_unet_blocks_0_cross_attn_output_proj.alpha",
            "lora_unet_blocks_0_mlp_layer1.lora_up.weight"} <= set(state)  # fmt: skip
    down, up = state["lora_unet_blocks_0_cross_attn_k_proj.lora_down.weight"], state["lora_unet_blocks_0_cross_attn_k_proj.lora_up.weight"]
    assert down.shape[0] == RANK and up.shape[1] == RANK  # down is rank x in, up is out x rank
    assert state["lora_unet_blocks_0_mlp_layer2.alpha"].shape == () and state["lora_unet_blocks_0_mlp_layer2.alpha"].item() == ALPHA

    with safe_open(str(files["kohya"]), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_network_module"] == "networks.lora_anima" and "ss_network_args" not in meta
    assert meta["ss_network_dim"] == str(RANK) and meta["ss_network_alpha"] == str(ALPHA)


def test_kohya_update_equals_comfy_update_for_every_module(files):
    comfy, kohya = load_lora_file(files["comfy"]), load_lora_file(files["kohya"])
    compared = 0
    for key, a in comfy.items():
        match = re.match(r"diffusion_model\.blocks\.(\d+)\.(.+)\.lora_A\.weight$", key)
        if not match:
            continue
        block, original = match.groups()
        name = f"lora_unet_blocks_{block}_{original.replace('.', '_')}"
        down, up, alpha = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"], kohya[f"{name}.alpha"]
        kohya_update = (up @ down) * (alpha.item() / down.shape[0])  # sd-scripts: scale = alpha / lora_dim
        comfy_update = comfy[key.replace("lora_A", "lora_B")] @ a
        torch.testing.assert_close(kohya_update, comfy_update, rtol=1e-6, atol=1e-7)
        compared += 1
    assert compared == len(comfy) // 2 == len(kohya) // 3


def test_kohya_style_merge_reproduces_the_peft_model(files, tiny_model, tiny_inputs):
    """W += up @ down * alpha / rank for every module, read from the file as sd-scripts' merge_to does."""
    state = load_lora_file(files["kohya"])
    merged = build_transformer(tiny_model, torch.float32, False).eval()
    modules = dict(merged.named_modules())
    kohya_to_original = {o.replace(".", "_"): o for o in ORIGINAL_TO_DIFFUSERS}
    for key, down in state.items():
        block, module, part = KOHYA_KEY.match(key).groups()
        if part != "lora_down.weight":
            continue
        name = key.removesuffix(".lora_down.weight")
        update = state[f"{name}.lora_up.weight"] @ down * (state[f"{name}.alpha"].item() / down.shape[0])
        modules[f"transformer_blocks.{block}.{ORIGINAL_TO_DIFFUSERS[kohya_to_original[module]]}"].weight.data += update
    with torch.no_grad():
        out = merged(**tiny_inputs())[0]
        base = build_transformer(tiny_model, torch.float32, False).eval()(**tiny_inputs())[0]
    assert (base - files["expected"]).abs().max().item() > 1e-2  # the LoRA really changes the output
    assert (out - files["expected"]).abs().max().item() < 1e-5


def test_round_trip_into_a_fresh_peft_model_reproduces_its_output(files, tiny_model, tiny_inputs):
    cfg = files["cfg"]
    back = from_kohya_state_dict(load_lora_file(files["kohya"]), cfg.network_scale)
    assert back.keys() == files["peft_state"].keys()
    for key, value in back.items():
        torch.testing.assert_close(value, files["peft_state"][key], rtol=1e-6, atol=1e-7)
    fresh = build_lora_model(build_transformer(tiny_model, torch.float32, False), RANK, ALPHA, seed=123).eval()
    load_adapter_state_dict(fresh, back)
    with torch.no_grad():
        assert (fresh(**tiny_inputs())[0] - files["expected"]).abs().max().item() < 1e-5


def test_round_trip_honours_each_modules_own_alpha(files):
    """A kohya file trained with another alpha (or none, meaning alpha = rank) loads as the same update."""
    kohya = load_lora_file(files["kohya"])
    rescaled = {k: (v * 2 if k.endswith("lora_up.weight") else torch.tensor(ALPHA / 2) if k.endswith("alpha") else v) for k, v in kohya.items()}
    no_alpha = {k: (v * (ALPHA / RANK) if k.endswith("lora_up.weight") else v) for k, v in kohya.items() if not k.endswith("alpha")}
    for variant in (rescaled, no_alpha):
        back = from_kohya_state_dict(variant, files["cfg"].network_scale)
        for key, value in back.items():
            torch.testing.assert_close(value, files["peft_state"][key], rtol=1e-6, atol=1e-7)


def test_bf16_export_keeps_alpha_exact(files):
    state = to_kohya_state_dict(files["peft_state"], 0.3, torch.bfloat16)  # 0.3 is not a bf16 number
    alphas = [v for k, v in state.items() if k.endswith(".alpha")]
    weights = [v for k, v in state.items() if not k.endswith(".alpha")]
    assert all(a.dtype == torch.float32 and a.item() == torch.tensor(0.3).item() for a in alphas)
    assert all(w.dtype == torch.bfloat16 for w in weights)


def test_diffusers_has_no_kohya_route_for_anima(files):
    """Why the kohya file is an extra and not the main one: diffusers 0.42 keeps `lora_unet_*` keys as they are,
    so load_lora_weights finds no `transformer.` key and loads nothing (anima-internals §A4). If this starts to
    fail, diffusers learned the format and these tests can load the kohya file through it directly."""
    converted = AnimaLoraLoaderMixin.lora_state_dict(load_lora_file(files["kohya"]))
    assert not any(k.startswith("transformer.") for k in converted)


def test_rejects_modules_outside_the_dit_blocks():
    with pytest.raises(ValueError, match="only the 10 linears"):
        to_kohya_state_dict({"time_embed.linear_1.lora_A.weight": torch.zeros(1, 1)}, 1.0, torch.float32)
    with pytest.raises(ValueError, match="not an Anima DiT kohya LoRA key"):
        from_kohya_state_dict({"lora_te_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(1, 1)}, 1.0)
