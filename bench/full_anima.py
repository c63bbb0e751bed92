"""Random weights at the real Anima shapes, in the real file layouts, for the full-size rehearsal (issue 20).

Never a model: every weight is noise. What is real is everything that depends on size and layout:
the module classes and configs, every tensor name and shape, bf16 on disk (so each file has the
real byte size), the Diffusers-format repo layout the native trainer downloads and the three
single files under `split_files/` that the seed and sd-scripts load.

    python bench/full_anima.py DEST [--scale real|reduced] [--sd-scripts-dir DIR]

writes DEST/repos/<owner>/<name>/... (one folder per Hub repo, served by bench/rehearse.py) and
DEST/manifest.json (each file's size and SHA-256, computed while writing). A finished DEST is
reused as is. `reduced` keeps the 28 blocks (so the LoRA still has 280 modules), the vocabularies
and every layout, but makes every width tiny: the same code path in seconds, for the slow test.

Generation is tensor by tensor: each tensor is drawn once (seeded by its Diffusers name), then
streamed into both the Diffusers file and the single file, so the converted single file must equal
the Diffusers transformer exactly, and host memory stays at one tensor.

Differences from the real repos (see bench/NOTES.md): the weights (noise: N(0, 0.02) matrices,
unit norm scales, zero biases); the tokenizers are the real Qwen3 and T5 ones copied from an
sd-scripts checkout (its `configs/`), or synthetic WordLevel tokenizers of the real vocabulary
sizes without one; the single VAE file uses the Diffusers key names, where the real one uses
ComfyUI's (sd-scripts converts those on load, so both load); each weights file is one shard.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT.parent) not in sys.path:  # run from a checkout without installing: the repo root is the package
    sys.path.insert(0, str(ROOT.parent))

from anima_lora_flow.core import known_models  # noqa: E402

DIFFUSERS_VERSION = "0.42.1"
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]  # fmt: skip
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]  # fmt: skip
QWEN_VOCAB, T5_VOCAB = 151_936, 32_128  # embedding rows (anima-internals §A1, §A3)
QWEN_TOKENS, T5_TOKENS = 151_669, 32_100  # tokenizer entries: the embeddings are padded beyond them

# anima-internals §A3 / §C: the 2B DiT, its LLM adapter, Qwen3-0.6B and the Qwen-Image (Wan 2.1) VAE.
REAL = {
    "transformer": dict(
        in_channels=16, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
        mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
        rope_scale=(1.0, 4.0, 4.0), concat_padding_mask=True, extra_pos_embed_type=None,
    ),
    "text_conditioner": dict(source_dim=1024, target_dim=1024, model_dim=1024, num_layers=6, num_attention_heads=16,
                             target_vocab_size=T5_VOCAB, min_sequence_length=512),
    "text_encoder": dict(
        vocab_size=QWEN_VOCAB, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643,
    ),
    "vae": dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0),
}  # fmt: skip
REDUCED = {
    "transformer": {**REAL["transformer"], "num_attention_heads": 2, "attention_head_dim": 16, "text_embed_dim": 32,
                    "adaln_lora_dim": 8},
    "text_conditioner": {**REAL["text_conditioner"], "source_dim": 32, "target_dim": 32, "model_dim": 32,
                         "num_layers": 2, "num_attention_heads": 2, "min_sequence_length": 512},
    "text_encoder": {**REAL["text_encoder"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
    "vae": {**REAL["vae"], "base_dim": 8, "num_res_blocks": 1},
}  # fmt: skip
SCALES = {"real": REAL, "reduced": REDUCED}

# Which DiT file names the single-file repo serves: the Diffusers base and one base without a
# Diffusers repo (the conversion path). Both hold the same bytes.
DIT_NAMES = (known_models.base_model("anima-base-v1.0").dit.filename, known_models.base_model("anima-preview3-base").dit.filename)


@dataclass
class Generated:
    dest: Path
    manifest: dict

    @property
    def repos(self) -> Path:
        return self.dest / "repos"

    def file(self, repo_id: str, filename: str) -> Path:
        return self.repos / repo_id / filename


# --- streaming safetensors ------------------------------------------------------------------------
_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32"}


class StreamWriter:
    """Writes a safetensors file one tensor at a time: the header is laid out from the shapes first.

    safetensors' own save_file needs every tensor in memory at once (4 GB for the DiT, twice over
    while it serialises); here only the tensor being written is.
    """

    def __init__(self, path: Path, layout: list[tuple[str, tuple[int, ...], torch.dtype]]):
        self.path, self.layout = path, layout
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in layout:
            size = _numel(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self._sha = hashlib.sha256()
        self._pending = [name for name, _, _ in layout]
        self._write(struct.pack("<Q", len(raw)) + raw)

    def _write(self, data) -> None:
        self._fh.write(data)
        self._sha.update(data)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        if not self._pending or self._pending[0] != name:
            raise RuntimeError(f"{self.path.name}: expected {self._pending[:1]}, got {name}")
        self._pending.pop(0)
        self._write(memoryview(tensor.contiguous().view(torch.uint8).numpy()))

    def finish(self) -> dict:
        if self._pending:
            raise RuntimeError(f"{self.path.name}: {len(self._pending)} tensors never written")
        self._fh.close()
        return {"size": self.path.stat().st_size, "sha256": self._sha.hexdigest()}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Noise for a weight, ones for a norm scale, zeros for a bias: finite activations in every module."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return torch.zeros(shape, dtype=dtype)
    if len(shape) <= 1 or leaf in ("gamma", "scale"):
        return torch.ones(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(dtype)


# --- key names of the single files ----------------------------------------------------------------
# Diffusers -> original (sd-scripts/ComfyUI) names; the inverse of diffusers' Cosmos 2 conversion.
_TO_ORIGINAL = [
    ("time_embed.t_embedder.", "t_embedder.1."), ("time_embed.norm.", "t_embedding_norm."),
    ("patch_embed.proj.", "x_embedder.proj.1."), ("norm_out.linear_1.", "final_layer.adaln_modulation.1."),
    ("norm_out.linear_2.", "final_layer.adaln_modulation.2."), ("proj_out.", "final_layer.linear."),
    ("transformer_blocks.", "blocks."), ("norm1.linear_1.", "adaln_modulation_self_attn.1."),
    ("norm1.linear_2.", "adaln_modulation_self_attn.2."), ("norm2.linear_1.", "adaln_modulation_cross_attn.1."),
    ("norm2.linear_2.", "adaln_modulation_cross_attn.2."), ("norm3.linear_1.", "adaln_modulation_mlp.1."),
    ("norm3.linear_2.", "adaln_modulation_mlp.2."), ("attn1.", "self_attn."), ("attn2.", "cross_attn."),
    ("to_q.", "q_proj."), ("to_k.", "k_proj."), ("to_v.", "v_proj."), ("to_out.0.", "output_proj."),
    ("norm_q.", "q_norm."), ("norm_k.", "k_norm."), ("ff.net.0.proj.", "mlp.layer1."), ("ff.net.2.", "mlp.layer2."),
]  # fmt: skip


def original_dit_key(diffusers_key: str) -> str:
    """`transformer_blocks.0.attn1.to_q.weight` -> `net.blocks.0.self_attn.q_proj.weight` (sd-scripts' file names)."""
    key = diffusers_key
    for new, old in _TO_ORIGINAL:
        key = key.replace(new, old)
    return "net." + key


# --- the generator ----------------------------------------------------------------------------------
def module_layout(cls, config: dict, dtype: torch.dtype) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, shape, dtype) of every saved tensor of a module built on the meta device (no memory)."""
    with torch.device("meta"):
        module = cls(config) if _takes_config_object(cls) else cls(**config)
    return [(k, tuple(v.shape), dtype) for k, v in module.state_dict().items()]


def _takes_config_object(cls) -> bool:
    return cls.__name__ == "Qwen3Model"


def generate(dest: Path, scale: str = "real", sd_scripts_dir: Path | None = None, seed: int = 0, echo=print) -> Generated:
    """Write both repos under dest/repos and dest/manifest.json; reuse dest when its manifest matches."""
    from diffusers import AutoencoderKLQwenImage, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner
    from transformers import Qwen3Config, Qwen3Model

    dest = Path(dest)
    manifest_path = dest / "manifest.json"
    tokenizer_source = _tokenizer_source(sd_scripts_dir)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("scale") == scale and manifest.get("seed") == seed and _files_present(dest, manifest):
            echo(f"reusing the generated {scale} Anima in {dest}")
            return Generated(dest, manifest)
    shutil.rmtree(dest / "repos", ignore_errors=True)
    manifest_path.unlink(missing_ok=True)
    shapes = SCALES[scale]
    started = time.time()
    diff_root = dest / "repos" / known_models.DIFFUSERS_REPO
    single_root = dest / "repos" / known_models.SINGLE_FILE_REPO
    files: dict[str, dict] = {}
    bf16 = torch.bfloat16

    # configs first (they are what from_pretrained reads), written by the classes themselves
    transformer_cfg = dict(shapes["transformer"])
    conditioner_cfg = dict(shapes["text_conditioner"])
    qwen_cfg = Qwen3Config(**shapes["text_encoder"])
    qwen_cfg.architectures = ["Qwen3Model"]
    vae_cfg = dict(shapes["vae"], latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD)
    _save_config(CosmosTransformer3DModel, transformer_cfg, diff_root / "transformer")
    _save_config(AnimaTextConditioner, conditioner_cfg, diff_root / "text_conditioner")
    _save_config(AutoencoderKLQwenImage, vae_cfg, diff_root / "vae")
    qwen_cfg.save_pretrained(diff_root / "text_encoder")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(diff_root / "scheduler")
    (diff_root / "model_index.json").write_text(json.dumps(_model_index(), indent=2, sort_keys=True) + "\n")
    (diff_root / "README.md").write_text("Random weights at the real Anima shapes (bench/full_anima.py); not a model.\n")
    tokenizers = _write_tokenizers(diff_root, tokenizer_source)

    # transformer + adapter -> Diffusers files and the single DiT file (net.* names, adapter inside)
    t_layout = module_layout(CosmosTransformer3DModel, transformer_cfg, bf16)
    c_layout = module_layout(AnimaTextConditioner, conditioner_cfg, bf16)
    dit_layout = [(original_dit_key(k), s, d) for k, s, d in t_layout] + [
        ("net.llm_adapter." + k, s, d) for k, s, d in c_layout
    ]
    _check_conversion(t_layout, dit_layout)
    dit_path = single_root / DIT_NAMES[0]
    weights = "diffusion_pytorch_model.safetensors"
    t_writer = StreamWriter(diff_root / "transformer" / weights, t_layout)
    c_writer = StreamWriter(diff_root / "text_conditioner" / weights, c_layout)
    dit_writer = StreamWriter(dit_path, dit_layout)
    named = [("transformer", t_writer, e) for e in t_layout] + [("text_conditioner", c_writer, e) for e in c_layout]
    for (module, writer, (name, shape, dtype)), (dit_name, _, _) in zip(named, dit_layout):
        tensor = random_tensor(f"{module}.{name}", shape, dtype, seed)
        writer.put(name, tensor)
        dit_writer.put(dit_name, tensor)
    files[f"{known_models.DIFFUSERS_REPO}/transformer/{weights}"] = t_writer.finish()
    files[f"{known_models.DIFFUSERS_REPO}/text_conditioner/{weights}"] = c_writer.finish()
    dit_info = dit_writer.finish()
    for name in DIT_NAMES:
        path = single_root / name
        if path != dit_path:
            os.link(dit_path, path)  # the same bytes under the second name, no second 4 GB on disk
        files[f"{known_models.SINGLE_FILE_REPO}/{name}"] = dit_info
    echo(f"  DiT written ({dit_info['size'] / 1e9:.2f} GB) after {time.time() - started:.0f} s")

    # Qwen3: transformers' names in the Diffusers folder, `model.`-prefixed in the single file
    q_layout = module_layout(Qwen3Model, qwen_cfg, bf16)
    q_writer = StreamWriter(diff_root / "text_encoder" / "model.safetensors", q_layout)
    te_writer = StreamWriter(single_root / known_models.TEXT_ENCODER.filename, [("model." + k, s, d) for k, s, d in q_layout])
    for name, shape, dtype in q_layout:
        tensor = random_tensor("text_encoder." + name, shape, dtype, seed)
        q_writer.put(name, tensor)
        te_writer.put("model." + name, tensor)
    files[f"{known_models.DIFFUSERS_REPO}/text_encoder/model.safetensors"] = q_writer.finish()
    files[f"{known_models.SINGLE_FILE_REPO}/{known_models.TEXT_ENCODER.filename}"] = te_writer.finish()

    # VAE: the same tensors in both places
    v_layout = module_layout(AutoencoderKLQwenImage, vae_cfg, bf16)
    v_writer = StreamWriter(diff_root / "vae" / weights, v_layout)
    vs_writer = StreamWriter(single_root / known_models.VAE.filename, v_layout)
    for name, shape, dtype in v_layout:
        tensor = random_tensor("vae." + name, shape, dtype, seed)
        v_writer.put(name, tensor)
        vs_writer.put(name, tensor)
    files[f"{known_models.DIFFUSERS_REPO}/vae/{weights}"] = v_writer.finish()
    files[f"{known_models.SINGLE_FILE_REPO}/{known_models.VAE.filename}"] = vs_writer.finish()
    (single_root / "README.md").write_text("Random weights at the real Anima shapes (bench/full_anima.py); not a model.\n")

    params = {
        "transformer": sum(_numel(s) for _, s, _ in t_layout),
        "text_conditioner": sum(_numel(s) for _, s, _ in c_layout),
        "text_encoder": sum(_numel(s) for _, s, _ in q_layout),
        "vae": sum(_numel(s) for _, s, _ in v_layout),
    }
    manifest = {
        "scale": scale, "seed": seed, "files": files, "params": params, "tokenizers": tokenizers,
        "configs": {"transformer": transformer_cfg, "text_conditioner": conditioner_cfg},
        "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=1, default=list))
    echo(f"generated the {scale} Anima in {dest} in {manifest['seconds']} s")
    return Generated(dest, json.loads(manifest_path.read_text()))


def _files_present(dest: Path, manifest: dict) -> bool:
    for key, info in manifest["files"].items():
        path = dest / "repos" / key
        if not path.is_file() or path.stat().st_size != info["size"]:
            return False
    return True


def _save_config(cls, config: dict, folder: Path) -> None:
    """The config.json that `save_pretrained` would write, without building the module."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        full = {"_class_name": cls.__name__, "_diffusers_version": DIFFUSERS_VERSION, **dict(cls(**config).config)}
    (folder / "config.json").write_text(json.dumps(full, indent=2, sort_keys=True, default=list) + "\n")


def _check_conversion(t_layout, dit_layout) -> None:
    """The single DiT file, put through diffusers' own conversion, must give the Diffusers names and shapes."""
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    from anima_lora_flow.models.convert import split_adapter

    placeholder = {name: torch.empty(shape, device="meta") for name, shape, _ in dit_layout}
    transformer, adapter = split_adapter(placeholder)
    converted = convert_cosmos_transformer_checkpoint_to_diffusers(transformer)
    got = {k: tuple(v.shape) for k, v in converted.items()}
    want = {k: s for k, s, _ in t_layout}
    if got != want:
        raise AssertionError(f"single-file names do not convert back: {sorted(set(got) ^ set(want))[:5]}")
    if not adapter:
        raise AssertionError("no llm_adapter keys in the single DiT file")


def _model_index() -> dict:
    return {
        "_class_name": "AnimaModularPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "text_conditioner": ["diffusers", "AnimaTextConditioner"],
        "transformer": ["diffusers", "CosmosTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "t5_tokenizer": ["transformers", "T5Tokenizer"],
    }


def _tokenizer_source(sd_scripts_dir: Path | None) -> Path | None:
    """sd-scripts' bundled Qwen3 and T5 tokenizer files, if a checkout has them."""
    candidates = [sd_scripts_dir, os.environ.get("ANIMA_SD_SCRIPTS_DIR")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "configs" / "qwen3_06b" / "vocab.json").is_file() and (
            Path(candidate) / "configs" / "t5_old" / "spiece.model"
        ).is_file():
            return Path(candidate) / "configs"
    return None


def _write_tokenizers(diff_root: Path, source: Path | None) -> dict:
    """tokenizer/ (Qwen3) and t5_tokenizer/ (T5): real files from sd-scripts, else synthetic of the real sizes."""
    qwen, t5 = diff_root / "tokenizer", diff_root / "t5_tokenizer"
    qwen.mkdir(parents=True, exist_ok=True)
    t5.mkdir(parents=True, exist_ok=True)
    if source is not None:
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json"):
            if (source / "qwen3_06b" / name).is_file():
                shutil.copyfile(source / "qwen3_06b" / name, qwen / name)
        for name in ("spiece.model", "tokenizer.json"):
            shutil.copyfile(source / "t5_old" / name, t5 / name)
        (t5 / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "T5Tokenizer", "model_max_length": 512, "eos_token": "</s>", "pad_token": "<pad>",
            "unk_token": "<unk>", "extra_ids": 100,
        }, indent=2) + "\n")  # fmt: skip
        kind = f"real (copied from {source.parent})"
    else:
        _synthetic_tokenizer(qwen, QWEN_TOKENS, pad="<|endoftext|>", t5_style=False)
        _synthetic_tokenizer(t5, T5_TOKENS, pad="<pad>", t5_style=True)
        kind = "synthetic WordLevel of the real vocabulary sizes (no sd-scripts checkout given)"
    from transformers import AutoTokenizer

    sizes = {"tokenizer": len(AutoTokenizer.from_pretrained(qwen)), "t5_tokenizer": len(AutoTokenizer.from_pretrained(t5))}
    return {"kind": kind, "sizes": sizes}


def _synthetic_tokenizer(folder: Path, size: int, *, pad: str, t5_style: bool) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from anima_lora_flow.trainer.tiny import TAG_WORDS

    specials = ["<pad>", "</s>", "<unk>"] if t5_style else ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    words = list(dict.fromkeys(specials + list(TAG_WORDS)))
    vocab = {tok: i for i, tok in enumerate(words + [f"tok{i}" for i in range(size - len(words))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if t5_style:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "pad_token": pad,
              "unk_token": "<unk>", "padding_side": "right"}  # fmt: skip
    if t5_style:
        config["eos_token"] = "</s>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--scale", choices=list(SCALES), default="real")
    parser.add_argument("--sd-scripts-dir", type=Path, default=None,
                        help="sd-scripts checkout whose configs/ hold the real tokenizers (default: $ANIMA_SD_SCRIPTS_DIR)")
    args = parser.parse_args(argv)
    generated = generate(args.dest, args.scale, args.sd_scripts_dir)
    print(json.dumps(generated.manifest["params"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
