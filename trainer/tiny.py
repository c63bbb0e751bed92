"""A tiny random Anima in Diffusers format, built offline in seconds, for tests and the demo.

Same classes and folder layout as circlestone-labs/Anima-Base-v1.0-Diffusers, only every width is
small. Weights are random, so it learns nothing useful; it exercises every code path of the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Common anime tags: the fixed vocabulary of both tiny tokenizers (whole words, WordLevel).
TAG_WORDS = tuple(
    "1girl 1boy 2girls solo smile open mouth blush looking at viewer long short hair blue red green "
    "black white blonde brown pink purple eyes dress shirt skirt school uniform hat ribbon bow outdoors "
    "indoors sky cloud tree flower sitting standing holding sword cat ears tail masterpiece best quality "
    "simple background upper body full portrait day night , . a the of and with in on".split()
)

T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # the T5 ids Anima's adapter expects: pad 0, eos 1, unk 2
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")

TINY_TRANSFORMER = dict(
    in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=2, mlp_ratio=4.0,
    text_embed_dim=32, adaln_lora_dim=8, max_size=(128, 240, 240), patch_size=(1, 2, 2),
    rope_scale=(1.0, 4.0, 4.0), concat_padding_mask=True, extra_pos_embed_type=None,
)  # fmt: skip
# min_sequence_length 16 instead of 512: the context stays small, the padding logic stays real.
TINY_CONDITIONER = dict(source_dim=32, target_dim=32, model_dim=32, num_layers=2, num_attention_heads=2, min_sequence_length=16)
TINY_QWEN = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True,
)  # fmt: skip
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])


def build_tiny_model(dest: Path, seed: int = 0, num_layers: int = TINY_TRANSFORMER["num_layers"]) -> Path:
    """Write a complete tiny Diffusers-format Anima folder at `dest` and return it.

    Deterministic: the same seed gives byte-identical weight files. `num_layers` is the DiT's block
    count (Anima has 28), for bases of another depth.
    """
    from diffusers import AutoencoderKLQwenImage, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner
    from transformers import Qwen3Config, Qwen3Model

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    t5_vocab = _write_tokenizer(dest / "t5_tokenizer", T5_SPECIALS, t5_style=True)
    qwen_vocab = _write_tokenizer(dest / "tokenizer", QWEN_SPECIALS, t5_style=False)

    torch.manual_seed(seed)
    CosmosTransformer3DModel(**{**TINY_TRANSFORMER, "num_layers": num_layers}).save_pretrained(dest / "transformer")
    AnimaTextConditioner(**TINY_CONDITIONER, target_vocab_size=t5_vocab).save_pretrained(dest / "text_conditioner")
    Qwen3Model(Qwen3Config(vocab_size=qwen_vocab, **TINY_QWEN)).save_pretrained(dest / "text_encoder")
    AutoencoderKLQwenImage(**TINY_VAE).save_pretrained(dest / "vae")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(dest / "scheduler")
    index = {
        "_class_name": "AnimaModularPipeline",
        "_diffusers_version": "0.42.1",
        "text_conditioner": ["diffusers", "AnimaTextConditioner"],
        "transformer": ["diffusers", "CosmosTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "t5_tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    }
    (dest / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return dest


def _write_tokenizer(folder: Path, specials: tuple[str, ...], *, t5_style: bool) -> int:
    """A WordLevel tokenizer over TAG_WORDS that AutoTokenizer loads offline; returns its vocab size.

    Built with `tokenizers` because the real ones would need the Hub. T5-style appends </s> like T5
    does; Qwen-style adds nothing, like Qwen's tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(specials + TAG_WORDS))}
    unk = "<unk>"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    pad = specials[0]
    if t5_style:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 512,
        "pad_token": pad,
        "unk_token": unk,
        "padding_side": "right",
    }
    if t5_style:
        config["eos_token"] = "</s>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return len(vocab)


if __name__ == "__main__":  # python -m anima_lora_flow.trainer.tiny DEST [SEED]: the demo's model
    import sys

    print(build_tiny_model(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
