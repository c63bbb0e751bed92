"""Single-file DiT -> Diffusers layout, on tiny modules written under the original (ComfyUI/kohya) key names."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from anima_lora_flow.models.convert import convert_single_file_dit
from anima_lora_flow.models.errors import ModelInputError

# diffusers name -> original name, written out by hand (the ai-toolkit direction), so the test does not reuse
# the table under test. Applied in order with str.replace.
_TO_ORIGINAL = [
    ("transformer_blocks.", "blocks."),
    (".attn1.to_out.0", ".self_attn.output_proj"),
    (".attn2.to_out.0", ".cross_attn.output_proj"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    ("to_q", "q_proj"),
    ("to_k", "k_proj"),
    ("to_v", "v_proj"),
    ("norm_q", "q_norm"),
    ("norm_k", "k_norm"),
    (".ff.net.0.proj", ".mlp.layer1"),
    (".ff.net.2", ".mlp.layer2"),
    (".norm1.linear_", ".adaln_modulation_self_attn."),
    (".norm2.linear_", ".adaln_modulation_cross_attn."),
    (".norm3.linear_", ".adaln_modulation_mlp."),
    ("norm_out.linear_", "final_layer.adaln_modulation."),
    ("proj_out", "final_layer.linear"),
    ("time_embed.t_embedder.", "t_embedder.1."),
    ("time_embed.norm", "t_embedding_norm"),
    ("patch_embed.proj", "x_embedder.proj.1"),
]


def original_name(key: str) -> str:
    for new, old in _TO_ORIGINAL:
        key = key.replace(new, old)
    return "net." + key


def tiny_modules(num_layers: int = 2):
    from diffusers import CosmosTransformer3DModel
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

    torch.manual_seed(0)
    transformer = CosmosTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=num_layers,
        text_embed_dim=32,
        adaln_lora_dim=8,
        max_size=(4, 16, 16),
        patch_size=(1, 2, 2),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    conditioner = AnimaTextConditioner(
        source_dim=32, target_dim=32, model_dim=32, num_layers=2, num_attention_heads=2, target_vocab_size=64
    )
    return transformer, conditioner


def write_reference(root, transformer, conditioner):
    """A Diffusers-format folder holding the configs (and stand-ins for the shared modules)."""
    transformer.save_config(root / "transformer")
    conditioner.save_config(root / "text_conditioner")
    for sub in ("text_encoder", "tokenizer", "t5_tokenizer", "vae", "scheduler"):
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text("{}")
    (root / "model_index.json").write_text("{}")


def write_original_checkpoint(path, transformer, conditioner):
    state = {original_name(k): v for k, v in transformer.state_dict().items()}
    state.update({f"net.llm_adapter.{k}": v for k, v in conditioner.state_dict().items()})
    # Buffers and counters the original file carries and diffusers drops.
    state["net.pos_embedder.dim_spatial_range"] = torch.tensor([1.0])
    state["net.accum_iteration"] = torch.tensor([3])
    save_file(state, path)


def test_round_trip_matches_the_modules(tmp_path):
    from diffusers import CosmosTransformer3DModel
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

    transformer, conditioner = tiny_modules()
    write_reference(tmp_path / "ref", transformer, conditioner)
    write_original_checkpoint(tmp_path / "dit.safetensors", transformer, conditioner)

    out = convert_single_file_dit(tmp_path / "dit.safetensors", tmp_path / "out", tmp_path / "ref")

    loaded_t = CosmosTransformer3DModel.from_pretrained(out, subfolder="transformer")
    loaded_c = AnimaTextConditioner.from_pretrained(out, subfolder="text_conditioner")
    for original, loaded in ((transformer, loaded_t), (conditioner, loaded_c)):
        expected, actual = original.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key
    assert (out / "vae").is_symlink() and (out / "model_index.json").is_file()
    assert (out / ".complete").is_file() and not (tmp_path / "out.partial").exists()


def test_a_deeper_dit_converts_with_its_own_block_count(tmp_path):
    """The reference config says 2 blocks (Anima's says 28); a 3-block file converts, and loads, as 3 blocks."""
    from diffusers import CosmosTransformer3DModel

    write_reference(tmp_path / "ref", *tiny_modules(num_layers=2))
    deeper, conditioner = tiny_modules(num_layers=3)
    write_original_checkpoint(tmp_path / "dit.safetensors", deeper, conditioner)
    out = convert_single_file_dit(tmp_path / "dit.safetensors", tmp_path / "out", tmp_path / "ref")
    loaded = CosmosTransformer3DModel.from_pretrained(out, subfolder="transformer")
    assert loaded.config.num_layers == 3 and len(loaded.transformer_blocks) == 3
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in deeper.state_dict().items())


def test_not_an_anima_file_is_refused(tmp_path):
    transformer, conditioner = tiny_modules()
    write_reference(tmp_path / "ref", transformer, conditioner)
    save_file({"net.something.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelInputError, match="not an Anima DiT"):
        convert_single_file_dit(tmp_path / "other.safetensors", tmp_path / "out", tmp_path / "ref")
    assert not (tmp_path / "out").exists()


def test_preview_model_is_converted_by_ensure_models(fake_hub, tmp_path):
    """A base model without a Diffusers repo: DiT single file + the Diffusers repo's other modules."""
    from anima_lora_flow.core import known_models
    from anima_lora_flow.models.download import ensure_models
    from fake_anima import DIT_PREVIEW

    transformer, conditioner = tiny_modules()
    write_reference(tmp_path / "ref", transformer, conditioner)
    write_original_checkpoint(tmp_path / "dit.safetensors", transformer, conditioner)
    diffusers_files = fake_hub.repos[known_models.DIFFUSERS_REPO].files
    for sub in ("transformer", "text_conditioner"):
        diffusers_files[f"{sub}/config.json"] = (tmp_path / "ref" / sub / "config.json").read_bytes()
    fake_hub.repos[known_models.SINGLE_FILE_REPO].files[DIT_PREVIEW] = (tmp_path / "dit.safetensors").read_bytes()

    paths = ensure_models("anima-preview", backend="native", cache_dir=tmp_path / "m", endpoint=fake_hub.url)

    fetched = {r[1].split("/resolve/")[1].split("/", 1)[1] for r in fake_hub.requests if r[0] == "GET" and "/resolve/" in r[1]}
    assert "transformer/diffusion_pytorch_model.safetensors" not in fetched  # replaced by the single file
    assert "vae/diffusion_pytorch_model.safetensors" in fetched
    weights = load_file(paths.diffusers_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(weights["proj_out.weight"], transformer.state_dict()["proj_out.weight"])
    assert (paths.diffusers_dir / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert paths.dit is not None and paths.dit.is_file()
    seen = len(fake_hub.requests)
    assert ensure_models("anima-preview", backend="native", cache_dir=tmp_path / "m", endpoint=fake_hub.url) == paths
    assert len(fake_hub.requests) == seen
