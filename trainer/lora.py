"""LoRA on the DiT through peft, and the one file format that loads in ComfyUI, diffusers and ai-toolkit.

File keys are `diffusion_model.blocks.{i}.<original module>.lora_A.weight` / `.lora_B.weight` with
alpha/rank folded into lora_B and no alpha keys (anima-internals §A4).

Optionally also kohya's sd-scripts format (`lora_unet_blocks_{i}_<original module, dots as _>.lora_down.weight`,
`.lora_up.weight`, `.alpha`; anima-internals §A4 "Saved keys"), for sd-scripts tools (resize, merge, resume as
--network_weights). It is a second file because diffusers 0.42 loads nothing from `lora_unet_*` keys (§A4 table).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save

# diffusers module (inside transformer_blocks.{i}) -> original Anima module (inside blocks.{i}).
# diffusers keeps its table local to _convert_non_diffusers_anima_lora_to_diffusers, so we keep these
# 10 names ourselves; tests/trainer/test_lora_format.py proves them against that converter.
DIFFUSERS_TO_ORIGINAL = {
    "attn1.to_q": "self_attn.q_proj",
    "attn1.to_k": "self_attn.k_proj",
    "attn1.to_v": "self_attn.v_proj",
    "attn1.to_out.0": "self_attn.output_proj",
    "attn2.to_q": "cross_attn.q_proj",
    "attn2.to_k": "cross_attn.k_proj",
    "attn2.to_v": "cross_attn.v_proj",
    "attn2.to_out.0": "cross_attn.output_proj",
    "ff.net.0.proj": "mlp.layer1",
    "ff.net.2": "mlp.layer2",
}
ORIGINAL_TO_DIFFUSERS = {v: k for k, v in DIFFUSERS_TO_ORIGINAL.items()}
# peft matches a string target with re.fullmatch against the full module name.
TARGET_REGEX = r"transformer_blocks\.\d+\.(" + "|".join(re.escape(k) for k in DIFFUSERS_TO_ORIGINAL) + ")"
ADAPTER = "default"
_PEFT_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)\.(lora_[AB])\.weight$")
_FILE_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\.(lora_[AB])\.weight$")
# kohya names a module `lora_unet_` + its original path with every "." turned into "_" (sd-scripts
# networks/lora_anima.py). The originals contain "_" themselves (self_attn.q_proj), so the way back is this
# lookup, not a replace.
_KOHYA_TO_ORIGINAL = {original.replace(".", "_"): original for original in ORIGINAL_TO_DIFFUSERS}
_KOHYA_KEY = re.compile(r"^lora_unet_blocks_(\d+)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT_TO_KOHYA = {"lora_A": "lora_down", "lora_B": "lora_up"}


def build_lora_model(transformer: torch.nn.Module, rank: int, alpha: float, seed: int) -> torch.nn.Module:
    """Inject a peft LoRA into the 10 linears of every DiT block; only the LoRA weights train.

    peft's default init is kohya's: A kaiming-uniform(a=sqrt(5)), B zero. Seeded so that a run and its
    resume (which then loads saved weights) start from the same tensors.
    """
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGET_REGEX, init_lora_weights=True, lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name=ADAPTER)
    for name, param in transformer.named_parameters():
        param.requires_grad_(".lora_" in name)
        if ".lora_" in name:
            param.data = param.data.float()  # fp32 master weights for the adapter, whatever the base dtype
    return transformer


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Raw peft weights (`transformer_blocks.0.attn1.to_q.lora_A.weight`, no scale): the resume format."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def load_adapter_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load raw peft weights saved by adapter_state_dict; every LoRA tensor must be present."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, dict(state), adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"saved adapter does not fit this model (missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}); "
            "network_dim and the base model must match the state being resumed"
        )


def _split_peft_key(key: str) -> tuple[str, str, str]:
    """`transformer_blocks.3.attn1.to_q.lora_A.weight` -> ("3", "self_attn.q_proj", "lora_A"), or raise."""
    match = _PEFT_KEY.match(key)
    if not match or match.group(2) not in DIFFUSERS_TO_ORIGINAL:
        raise ValueError(f"unexpected LoRA weight {key!r}: only the 10 linears of each DiT block are exported")
    block, module, which = match.groups()
    return block, DIFFUSERS_TO_ORIGINAL[module], which


def to_comfy_state_dict(peft_state: Mapping[str, torch.Tensor], scale: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """peft keys -> `diffusion_model.blocks.{i}.<original>.lora_{A,B}.weight`, alpha/rank folded into lora_B."""
    out = {}
    for key, value in peft_state.items():
        block, original, which = _split_peft_key(key)
        tensor = value.float() * scale if which == "lora_B" else value.float()
        out[f"diffusion_model.blocks.{block}.{original}.{which}.weight"] = tensor.to(dtype).contiguous()
    return out


def from_comfy_state_dict(file_state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The inverse of to_comfy_state_dict (for loading our own files back into a peft model)."""
    out = {}
    for key, value in file_state.items():
        match = _FILE_KEY.match(key)
        if not match or match.group(2) not in ORIGINAL_TO_DIFFUSERS:
            raise ValueError(f"not an Anima DiT LoRA key: {key!r}")
        block, module, which = match.groups()
        tensor = value.float() / scale if which == "lora_B" else value.float()
        out[f"transformer_blocks.{block}.{ORIGINAL_TO_DIFFUSERS[module]}.{which}.weight"] = tensor
    return out


def to_kohya_state_dict(peft_state: Mapping[str, torch.Tensor], alpha: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """peft keys -> kohya `lora_unet_blocks_{i}_<original>.lora_down/.lora_up.weight` plus a per-module `.alpha`.

    down = A and up = B as trained (unscaled): kohya's loaders apply alpha/rank themselves (rank from lora_down's
    shape), the same factor as peft's lora_alpha/r, so the file gives the same update as the peft model and the
    comfy file. alpha is written as an fp32 scalar whatever `dtype` is (sd-scripts would cast it to the save dtype):
    loaders read it with .item()/.float(), and fp32 keeps alpha/rank exact where bf16 would round e.g. 0.3.
    """
    out = {}
    for key, value in peft_state.items():
        block, original, which = _split_peft_key(key)
        name = f"lora_unet_blocks_{block}_{original.replace('.', '_')}"
        out[f"{name}.{_PEFT_TO_KOHYA[which]}.weight"] = value.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def from_kohya_state_dict(file_state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """kohya keys -> raw peft weights for a peft model whose scale is `scale`.

    Each module's own alpha/rank (alpha missing or 0 means alpha = rank, as in sd-scripts) is folded into lora_B
    and the peft scale divided out, so a file trained with another alpha still loads as the same update.
    """
    parsed: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in file_state.items():
        match = _KOHYA_KEY.match(key)
        if not match or match.group(2) not in _KOHYA_TO_ORIGINAL:
            raise ValueError(f"not an Anima DiT kohya LoRA key: {key!r}")
        block, module, part = match.groups()
        parsed.setdefault((block, _KOHYA_TO_ORIGINAL[module]), {})[part] = value
    out = {}
    for (block, original), parts in parsed.items():
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
        rank = down.shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts and float(parts["alpha"]) != 0 else rank
        prefix = f"transformer_blocks.{block}.{ORIGINAL_TO_DIFFUSERS[original]}"
        out[f"{prefix}.lora_A.weight"] = down
        out[f"{prefix}.lora_B.weight"] = up * (alpha / rank) / scale
    return out


def kohya_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The main file's metadata, restated for the kohya file: sd-scripts' own module, and no claim of a folded alpha."""
    out = {k: v for k, v in metadata.items() if k != "ss_network_args"}
    out["ss_network_module"] = "networks.lora_anima"
    return out


def save_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: Mapping[str, object]) -> Path:
    """Write safetensors under a temp name, then os.replace: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(reproducible_safetensors(tensors, {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}))
    os.replace(tmp, path)
    return path


def reproducible_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes that depend only on the tensors and the metadata: the same run, the same file.

    The safetensors writer keeps metadata in a Rust HashMap, whose order changes from process to
    process. The header is a JSON object followed by the raw tensor bytes at offsets relative to the
    end of the header, so it can be written again with its keys sorted (and space-padded to 8 bytes,
    as the writer aligns it) without touching the data.
    """
    data = save(dict(tensors), metadata=dict(metadata))
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def load_lora_file(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def base_model_metadata(record: Mapping[str, object]) -> dict[str, str]:
    """The base model (trainer/state.base_model_record) in kohya's key names where it has them."""
    out = {"ss_sd_model_name": str(record.get("name") or "")}
    if record.get("dit_sha256"):
        out["ss_new_sd_model_hash"] = str(record["dit_sha256"])
    for key in ("blocks", "hidden_size"):
        if record.get(key) is not None:
            out[f"ss_base_model_{key}"] = str(record[key])
    return out if record else {}


def lora_metadata(cfg, eff, *, optimizer: str, steps: int, epoch: int, total_steps: int, dataset_fingerprint: str) -> dict[str, str]:
    """kohya-style ss_* metadata plus modelspec keys, as strings (safetensors metadata is str -> str).

    Numbers come from `eff` (effective.Effective), the optimizer from what was built (loop.describe_optimizer):
    the file says what was trained, never "auto". No time stamps: the same run writes the same bytes.
    """
    return {
        "ss_network_module": "peft.lora (anima-lora-flow native)",
        "ss_network_dim": str(cfg.network_dim),
        "ss_network_alpha": str(cfg.network_alpha),
        "ss_network_args": json.dumps({"alpha_folded_into": "lora_B"}),
        "ss_base_model_version": "anima",
        "ss_learning_rate": str(cfg.learning_rate),
        "ss_optimizer": optimizer,
        "ss_lr_scheduler": eff.lr_scheduler,
        "ss_lr_warmup_steps": str(eff.warmup_steps),
        "ss_mixed_precision": eff.precision,
        "ss_gradient_checkpointing": str(eff.gradient_checkpointing),
        "ss_resolution": str(cfg.resolution),
        "ss_seed": str(cfg.seed),
        "ss_steps": str(steps),
        "ss_epoch": str(epoch),
        "ss_num_epochs": str(eff.steps.epochs),
        "ss_num_batches_per_epoch": str(eff.steps.batches_per_epoch),
        "ss_max_train_steps": str(total_steps),
        "ss_batch_size_per_device": str(eff.batch_size),
        "ss_gradient_accumulation_steps": str(cfg.gradient_accumulation_steps),
        "ss_total_batch_size": str(eff.batch_size * eff.micro_batches_per_step),
        "ss_caption_dropout_rate": str(cfg.caption_dropout),
        "ss_timestep_sampling": cfg.timestep_sampling,
        "ss_sigmoid_scale": str(cfg.sigmoid_scale),
        "ss_discrete_flow_shift": str(cfg.discrete_flow_shift),
        "ss_output_name": cfg.project_name,
        "ss_training_comment": f"anima-lora-flow; base {cfg.base_model}; dataset {dataset_fingerprint or '-'}",
        "ss_config_fingerprint": cfg.fingerprint(dataset_fingerprint),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "anima-preview/lora",
        "modelspec.implementation": "https://huggingface.co/circlestone-labs/Anima",
        "modelspec.title": cfg.project_name,
    }
