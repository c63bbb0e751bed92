"""LoRA on the DiT through peft, and the one file format that loads in ComfyUI, diffusers and ai-toolkit.

File keys are `diffusion_model.blocks.{i}.<original module>.lora_A.weight` / `.lora_B.weight` with
alpha/rank folded into lora_B and no alpha keys (anima-internals §A4).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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


def to_comfy_state_dict(peft_state: Mapping[str, torch.Tensor], scale: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """peft keys -> `diffusion_model.blocks.{i}.<original>.lora_{A,B}.weight`, alpha/rank folded into lora_B."""
    out = {}
    for key, value in peft_state.items():
        match = _PEFT_KEY.match(key)
        if not match or match.group(2) not in DIFFUSERS_TO_ORIGINAL:
            raise ValueError(f"unexpected LoRA weight {key!r}: only the 10 linears of each DiT block are exported")
        block, module, which = match.groups()
        tensor = value.float() * scale if which == "lora_B" else value.float()
        out[f"diffusion_model.blocks.{block}.{DIFFUSERS_TO_ORIGINAL[module]}.{which}.weight"] = tensor.to(dtype).contiguous()
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


def save_lora_file(path: Path, tensors: dict[str, torch.Tensor], metadata: Mapping[str, object]) -> Path:
    """Write safetensors under a temp name, then os.replace: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)
    return path


def load_lora_file(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def lora_metadata(cfg, *, steps: int, epoch: int, total_steps: int, dataset_fingerprint: str) -> dict[str, str]:
    """kohya-style ss_* metadata plus modelspec keys, as strings (safetensors metadata is str -> str)."""
    return {
        "ss_network_module": "peft.lora (anima-lora-flow native)",
        "ss_network_dim": str(cfg.network_dim),
        "ss_network_alpha": str(cfg.network_alpha),
        "ss_network_args": json.dumps({"alpha_folded_into": "lora_B"}),
        "ss_base_model_version": "anima",
        "ss_learning_rate": str(cfg.learning_rate),
        "ss_optimizer": cfg.optimizer,
        "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_mixed_precision": cfg.mixed_precision,
        "ss_resolution": str(cfg.resolution),
        "ss_seed": str(cfg.seed),
        "ss_steps": str(steps),
        "ss_epoch": str(epoch),
        "ss_max_train_steps": str(total_steps),
        "ss_batch_size_per_device": str(cfg.batch_size),
        "ss_gradient_accumulation_steps": str(cfg.gradient_accumulation_steps),
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
