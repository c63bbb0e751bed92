"""Turn an original Anima DiT single file into the Diffusers layout, with diffusers' own Cosmos key conversion."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..core import known_models
from .errors import ModelInputError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# The LLM adapter rides inside the DiT file; diffusers keeps it as its own module with unchanged sub-names.
_ADAPTER_PREFIXES = ("net.llm_adapter.", "llm_adapter.")
_BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.")


def split_adapter(state_dict: dict) -> tuple[dict, dict]:
    """(transformer keys, adapter keys with their prefix stripped) of an original checkpoint."""
    transformer, adapter = {}, {}
    for key, tensor in state_dict.items():
        prefix = next((p for p in _ADAPTER_PREFIXES if key.startswith(p)), None)
        if prefix:
            adapter[key[len(prefix) :]] = tensor
        else:
            transformer[key] = tensor
    return transformer, adapter


def convert_single_file_dit(dit_path: Path, dest: Path, reference_diffusers_dir: Path) -> Path:
    """Write `dest` as a loadable Diffusers folder: converted transformer/ and text_conditioner/, the rest linked.

    `reference_diffusers_dir` supplies the module configs and the text encoder, tokenizers, VAE and scheduler.

    Raises:
        ModelInputError: the file is not an Anima DiT (no adapter keys, or keys the modules do not expect).
    """
    from diffusers import CosmosTransformer3DModel  # noqa: PLC0415 - heavy import, only when converting
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers  # noqa: PLC0415
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    dit_path, dest, reference = Path(dit_path), Path(dest), Path(reference_diffusers_dir)
    transformer_sd, adapter_sd = split_adapter(load_file(dit_path))
    if not adapter_sd:
        raise ModelInputError(f"{dit_path.name} has no llm_adapter weights, so it is not an Anima DiT; pick an Anima file")
    transformer_sd = convert_cosmos_transformer_checkpoint_to_diffusers(transformer_sd)

    # Build in a sibling folder and move it in place, so an interrupted conversion never looks finished.
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _save_module(CosmosTransformer3DModel, reference / "transformer", transformer_sd, partial / "transformer", dit_path)
    _save_module(AnimaTextConditioner, reference / "text_conditioner", adapter_sd, partial / "text_conditioner", dit_path)
    _link_shared(reference, partial)
    (partial / ".complete").write_text(json.dumps({"source": str(dit_path)}))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return dest


def _save_module(cls, config_dir: Path, state_dict: dict, out_dir: Path, source: Path) -> None:
    """Check the keys against the module built from its config (on the meta device), then save weights + config."""
    from accelerate import init_empty_weights  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415

    config = cls.load_config(config_dir)
    blocks = {int(m.group(1)) for m in map(_BLOCK_KEY.match, state_dict) if m}
    if blocks and "num_layers" in config and cls.__name__ == "CosmosTransformer3DModel":
        # The file's block count wins over the reference config's 28: a deeper base converts as it is.
        config["num_layers"] = max(blocks) + 1
    with init_empty_weights():
        expected = set(cls.from_config(config).state_dict())
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise ModelInputError(
            f"{source.name} does not match {cls.__name__} (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); it is not an Anima DiT this version can convert"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    written = json.loads((config_dir / "config.json").read_text())
    if "num_layers" in written and cls.__name__ == "CosmosTransformer3DModel":
        written["num_layers"] = config["num_layers"]
    (out_dir / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")


def _link_shared(reference: Path, dest: Path) -> None:
    """Link the modules a single file does not replace (copy where symlinks are not allowed)."""
    for sub in known_models.DIFFUSERS_SUBFOLDERS:
        if sub in known_models.CONVERTED_SUBFOLDERS or not (reference / sub).exists():
            continue
        try:
            (dest / sub).symlink_to((reference / sub).resolve(), target_is_directory=True)
        except OSError:
            shutil.copytree(reference / sub, dest / sub)
    for name in known_models.DIFFUSERS_INDEX_FILES:
        if (reference / name).exists():
            shutil.copyfile(reference / name, dest / name)
