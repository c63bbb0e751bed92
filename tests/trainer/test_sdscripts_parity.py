"""Parity with kohya sd-scripts' own Anima code: the native trainer must predict, and be scored, as sd-scripts is.

One small random Anima is built with sd-scripts' model class (2 blocks, narrow DiT, the full-size LLM adapter),
saved as the original `net.`-prefixed single file, converted by models/convert.py into the Diffusers layout and
trained on by the native path (build_cache -> collate -> compute_loss). The same captions, latents, noise and sigmas
then go through sd-scripts' text encoding, caption dropout and training step, and the two must agree.

Needs a checkout of kohya-ss/sd-scripts (tested at 48d368fa) named by ANIMA_SD_SCRIPTS_DIR, plus the packages its
model code imports (einops, cv2, torchvision); skipped otherwise, as in CI. Nothing is copied from sd-scripts: its
model module is imported from the checkout. Its text-encoding, dropout, noising and loss-weighting functions live
in modules that import library/train_util.py, which needs transformers 4.x (CLIPFeatureExtractor, batch_encode_plus
are gone in 5.x), so those few functions are compiled from the checkout's own source (_sd_function) and called
unchanged with the names they use.

Tolerances: everything runs in fp32 on the CPU. Noise and sigmas come from the same RNG stream, so the noisy latents
match exactly; sd-scripts' timestep is sigma*1000/1000, one rounding from sigma. The two models compute the same
maths with different op orders (einops rearranges vs reshapes, RoPE applied in another layout, diffusers' attention
dispatch, masking by indexing vs by multiplying), which moves fp32 results by a few ulps per op: through 6 adapter
and 2 DiT blocks the context and prediction differ by about 6e-6 on values up to 5, so 1e-4 leaves a 15x margin.
A real mismatch is far larger: scaling one norm gain of the checkpoint by 1.05 already moves the prediction by 4e-3
to 0.4, and a wrong key, a swapped H/W, a missing mask or an off-by-1000 timestep move it by O(1).
"""

from __future__ import annotations

import __future__
import ast
import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

SD_DIR = os.environ.get("ANIMA_SD_SCRIPTS_DIR")
if not SD_DIR:
    pytest.skip(
        "ANIMA_SD_SCRIPTS_DIR is not set: point it at a kohya sd-scripts checkout to compare with its Anima code",
        allow_module_level=True,
    )
# sd-scripts' RMSNorm opens an fp32 CPU autocast region, which torch warns is unsupported (and skips): harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")
for _module, _package in (("einops", "einops"), ("cv2", "opencv-python-headless"), ("torchvision", "torchvision")):
    pytest.importorskip(_module, reason=f"sd-scripts' Anima model code imports {_module}: pip install {_package}")

from anima_lora_flow.core.train_items import TrainItem  # noqa: E402
from anima_lora_flow.models.convert import convert_single_file_dit  # noqa: E402
from anima_lora_flow.trainer.cache import build_cache  # noqa: E402
from anima_lora_flow.trainer.components import build_transformer  # noqa: E402
from anima_lora_flow.trainer.data import collate  # noqa: E402
from anima_lora_flow.trainer.loss import Objective, compute_loss, sample_sigmas  # noqa: E402

SD = Path(SD_DIR)
if not (SD / "library" / "anima_models.py").is_file():
    pytest.fail(f"ANIMA_SD_SCRIPTS_DIR={SD_DIR} holds no library/anima_models.py: name a kohya sd-scripts checkout "
                "with Anima support (v0.10.1 or later)", pytrace=False)  # fmt: skip

# The DiT shrunk (width 128 = 2 heads x 64, 2 blocks, AdaLN-LoRA 32); every other option is the released model's.
SMALL_SD_DIT = dict(model_channels=128, num_heads=2, num_blocks=2, adaln_lora_dim=32)
# diffusers' Cosmos-2.0-2B ("Anima") transformer config, as the Diffusers repo ships it, shrunk the same way.
SMALL_TRANSFORMER = dict(
    in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=64, num_layers=2, mlp_ratio=4.0,
    text_embed_dim=1024, adaln_lora_dim=32, max_size=(128, 240, 240), patch_size=(1, 2, 2),
    rope_scale=(1.0, 4.0, 4.0), concat_padding_mask=True, extra_pos_embed_type=None,
)  # fmt: skip
# The adapter is full size. Its output length (sd-scripts' --t5_max_token_length, the conditioner's
# min_sequence_length; both 512 in the release) is 64 here on both sides: the DiT attends to the zero rows, so
# the two must be equal, not 512, and 512 T5 queries through 6 full-width blocks would cost most of the test's time.
CONTEXT_LEN = 64
QWEN_LEN = 48  # sd-scripts pads the Qwen3 ids to --qwen3_max_token_length; masked, so any length gives the same
# A real Qwen3Model, narrow but with the real output width (1024): its hidden states are what both adapters read.
QWEN = dict(
    hidden_size=1024, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    head_dim=64, max_position_embeddings=1024, tie_word_embeddings=True,
)  # fmt: skip
# The empty one is an image without a caption, and what sd-scripts' dataset-side dropout tokenises (no TE cache).
CAPTIONS = ("1girl, solo, smile, blue hair, school uniform", "cat ears, red eyes, portrait", "1boy, sword, sky", "")
BUCKET = (96, 64)  # width != height, so a swapped H/W in patching or RoPE shows
DROPOUT, DROPOUT_SEED = 0.5, 5  # this seed drops caption 1 only (asserted)
RTOL = ATOL = 1e-4


def _sd_function(relpath: str, qualname: str, **names):
    """A function (or method, as a plain function of `self`) compiled from the checkout's own source.

    Annotations stay unevaluated (PEP 563), so only the names the body uses must be given.
    """
    path = SD / relpath
    node = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for part in qualname.split("."):
        node = next(n for n in node.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
    code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)  # fmt: skip
    namespace = dict(names)
    exec(code, namespace)  # noqa: S102 - sd-scripts' own source, from the checkout the user named
    return namespace[node.name]


def _sd_dit_config() -> dict:
    """sd-scripts' hard-coded Anima DiT config (anima_utils.load_anima_model), read from its source, shrunk."""
    path = SD / "library" / "anima_utils.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    loader = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "load_anima_model")
    assign = next(
        n for n in ast.walk(loader) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "dit_config"
    )
    names = {"attn_mode": "torch", "split_attn": False}  # the loader's own arguments, as training passes them
    config = eval(compile(ast.Expression(assign.value), str(path), "eval"), names)  # noqa: S307
    assert set(SMALL_SD_DIT) <= set(config), "sd-scripts renamed a DiT option this test shrinks"
    return {**config, **SMALL_SD_DIT}


@contextlib.contextmanager
def _sd_scripts_importable():
    """sd-scripts' `library` package on sys.path; its setup_logging must not leave a handler on the root logger."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sys.path.insert(0, str(SD))
    try:
        yield
    finally:
        sys.path.remove(str(SD))
        root.handlers[:] = handlers
        root.setLevel(level)


def _randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter random at a scale that keeps activations O(1); no zero-initialised layer hides a mismatch."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, p in model.named_parameters():
        if name.endswith("embed.weight"):  # the adapter's T5 embedding: unit rows, like a trained one
            weights[name] = torch.randn(p.shape, generator=g)
        elif p.ndim == 2:
            weights[name] = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1])
        elif name.endswith("weight"):  # norm gains
            weights[name] = 1 + 0.2 * torch.randn(p.shape, generator=g)
        else:  # biases
            weights[name] = 0.2 * torch.randn(p.shape, generator=g)
    return weights


def _write_images(folder: Path, n: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (BUCKET[1] + 8 * i, BUCKET[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def sd_steps():
    """sd-scripts' text encoding, caption dropout, noising and training-step functions, from the checkout's source."""
    flux = SimpleNamespace(get_noisy_model_input_and_timesteps=_sd_function(
        "library/flux_train_utils.py", "get_noisy_model_input_and_timesteps", torch=torch))  # fmt: skip
    anima_train_utils = SimpleNamespace(compute_loss_weighting_for_anima=_sd_function(
        "library/anima_train_utils.py", "compute_loss_weighting_for_anima", torch=torch, math=math))  # fmt: skip
    return SimpleNamespace(
        noising=flux.get_noisy_model_input_and_timesteps,
        encode_tokens=_sd_function("library/strategy_anima.py", "AnimaTextEncodingStrategy.encode_tokens"),
        drop=_sd_function("library/strategy_anima.py", "AnimaTextEncodingStrategy.drop_cached_text_encoder_outputs",
                          torch=torch, random=random),  # fmt: skip
        noise_pred_and_target=_sd_function(
            "anima_train_network.py", "AnimaNetworkTrainer.get_noise_pred_and_target",
            torch=torch, flux_train_utils=flux, anima_train_utils=anima_train_utils,
        ),
    )


@pytest.fixture(scope="module")
def parity(tmp_path_factory, tiny_model):
    """sd-scripts' model, and the native models folder and caches made from its converted single file."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3Model

    tmp = tmp_path_factory.mktemp("parity")
    with _sd_scripts_importable():
        from library import anima_models

    with init_empty_weights():  # as sd-scripts' loader builds it; buffers stay real
        sd_model = anima_models.Anima(**_sd_dit_config())
    sd_model.load_state_dict(_randomise(sd_model, seed=0), strict=False, assign=True)
    sd_model.eval()
    # The released single file: every state-dict entry (buffers included) under "net.", as sd-scripts strips it.
    save_file({f"net.{k}": v.contiguous() for k, v in sd_model.state_dict().items()}, tmp / "anima.safetensors")

    # The Diffusers repo the conversion takes its configs and shared modules from: tiny tokenizers and VAE,
    # a Qwen3 with 1024-wide output, and this test's transformer and (full-size) conditioner configs.
    reference = tmp / "reference"
    shutil.copytree(tiny_model, reference)
    for sub in ("transformer", "text_conditioner", "text_encoder"):
        shutil.rmtree(reference / sub)
    vocab = len(json.loads((reference / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"])
    torch.manual_seed(1)
    Qwen3Model(Qwen3Config(vocab_size=vocab, **QWEN)).save_pretrained(reference / "text_encoder")
    for sub, config in (
        ("transformer", {"_class_name": "CosmosTransformer3DModel", **SMALL_TRANSFORMER}),
        ("text_conditioner", {"_class_name": "AnimaTextConditioner", "min_sequence_length": CONTEXT_LEN}),
    ):
        (reference / sub).mkdir()
        (reference / sub / "config.json").write_text(json.dumps(config))
    models_dir = convert_single_file_dit(tmp / "anima.safetensors", tmp / "models", reference)

    items = [TrainItem(p, c, BUCKET, repeats=1) for p, c in zip(_write_images(tmp / "images", len(CAPTIONS)), CAPTIONS)]
    return SimpleNamespace(
        sd_model=sd_model,
        models_dir=models_dir,
        cache=build_cache(items, models_dir, tmp / "work", torch.device("cpu"), torch.float32),
        native=build_transformer(models_dir, torch.float32, gradient_checkpointing=False).eval(),
    )


def _sd_text_conds(parity, sd_steps, captions: list[str], drop: torch.Tensor) -> list[torch.Tensor]:
    """sd-scripts' cached text-encoder outputs for a batch, then its caption dropout at rate 1 where `drop` is set.

    Tokenised as AnimaTokenizeStrategy.tokenize does (both streams padded to max_length); it calls
    batch_encode_plus, which transformers 5 removed, so the tokenizer is called with the same arguments here.
    """
    from transformers import AutoTokenizer, Qwen3Model

    tokens = []
    for sub, length in (("tokenizer", QWEN_LEN), ("t5_tokenizer", CONTEXT_LEN)):
        enc = AutoTokenizer.from_pretrained(parity.models_dir / sub)(
            captions, return_tensors="pt", truncation=True, padding="max_length", max_length=length
        )
        tokens += [enc["input_ids"], enc["attention_mask"]]
    qwen3 = Qwen3Model.from_pretrained(parity.models_dir / "text_encoder").eval()
    with torch.no_grad():
        conds = sd_steps.encode_tokens(None, None, [qwen3], tokens)
    return sd_steps.drop(None, *conds, caption_dropout_rates=drop.float())


def _capture(module: torch.nn.Module, store: dict, name: str, *, pre: bool = False):
    """Record a module's call (kwargs and positional args) or its output, without changing either."""
    if pre:
        return module.register_forward_pre_hook(
            lambda m, args, kwargs: store.update({name: (args, kwargs)}), with_kwargs=True
        )
    return module.register_forward_hook(lambda m, args, output: store.update({name: output}))


def test_native_step_matches_sd_scripts_step(parity, sd_steps):
    """Same captions (one dropped, one empty), latents, noise and sigmas: the same DiT context, prediction, target
    and loss."""
    indices = list(range(len(CAPTIONS)))
    generator = torch.Generator().manual_seed(DROPOUT_SEED)
    drop = torch.rand(len(indices), generator=torch.Generator().manual_seed(DROPOUT_SEED)) < DROPOUT
    assert drop.any() and not drop.all(), "the batch must hold both a dropped and a kept caption"

    # Native: exactly the loop's calls (trainer/loop.py): collate with dropout, then compute_loss, one generator.
    batch = collate(indices, parity.cache, generator, DROPOUT, torch.device("cpu"))
    rng_state = generator.get_state()  # what compute_loss draws noise and sigmas from
    seen: dict = {}
    hooks = [_capture(parity.native, seen, "native_in", pre=True), _capture(parity.native, seen, "native_out")]
    with torch.no_grad():
        native_loss = compute_loss(parity.native, batch, Objective(), generator)
    for hook in hooks:
        hook.remove()
    native_in, native_pred = seen["native_in"][1], seen["native_out"][0]

    # sd-scripts: its cached-TE-output path with dropout, then AnimaNetworkTrainer.get_noise_pred_and_target
    # and the loss of train_network.process_batch (l2, reduction none, x weighting, mean per sample, mean).
    text_conds = _sd_text_conds(parity, sd_steps, [CAPTIONS[i] for i in indices], drop)
    args = SimpleNamespace(  # sd-scripts' defaults, which Objective() mirrors
        timestep_sampling="sigmoid", sigmoid_scale=1.0, discrete_flow_shift=1.0, ip_noise_gamma=None,
        weighting_scheme="uniform", gradient_checkpointing=False,
    )  # fmt: skip
    accelerator = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)
    scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))
    hooks = [
        _capture(parity.sd_model, seen, "sd_in", pre=True),
        _capture(parity.sd_model.blocks[0], seen, "sd_block0", pre=True),  # its input is the DiT context
    ]
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng_state)  # sd-scripts draws from the global generator, in the same order
        sd_pred, sd_target, sd_timesteps, weighting = sd_steps.noise_pred_and_target(
            None, args, accelerator, scheduler, batch["latents"].squeeze(2), None, text_conds, parity.sd_model,
            None, torch.float32, True, is_train=False,
        )  # fmt: skip
    for hook in hooks:
        hook.remove()
    sd_loss = (F.mse_loss(sd_pred.float(), sd_target.float(), reduction="none") * weighting).mean(dim=[1, 2, 3]).mean()

    sigmas = native_in["timestep"]
    # Same noisy latents and sigma: same RNG draws and the same x_t = (1 - s) x0 + s e.
    torch.testing.assert_close(native_in["hidden_states"], seen["sd_in"][0][0], rtol=0, atol=0)
    torch.testing.assert_close(sigmas, sd_timesteps, rtol=1e-6, atol=0)  # the DiT gets sigma in [0, 1] on both
    torch.testing.assert_close(seen["sd_in"][0][1], sd_timesteps)
    # The same 64-row DiT context, zero rows after each prompt, including the dropped and the empty caption's
    # (sd-scripts: T5 ids </s> then pads, Qwen3 states zeroed and all masked; native: the cached encoding of "").
    sd_context = seen["sd_block0"][0][2]
    assert native_in["encoder_hidden_states"].shape == sd_context.shape == (len(indices), CONTEXT_LEN, 1024)
    torch.testing.assert_close(native_in["encoder_hidden_states"], sd_context, rtol=RTOL, atol=ATOL)
    empty = parity.cache.empty_context
    for row in [*torch.nonzero(drop).flatten().tolist(), CAPTIONS.index("")]:
        assert text_conds[2][row, 0] == 1 and not text_conds[2][row, 1:].any() and not text_conds[1][row].any()
        torch.testing.assert_close(native_in["encoder_hidden_states"][row, : empty.shape[0]], empty)
    # Same prediction, same velocity target (noise - x0), same loss.
    assert sd_pred.abs().mean() > 0.1  # a real signal, not a near-zero output that any model would match
    torch.testing.assert_close(native_pred[:, :, 0], sd_pred, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(native_loss, F.mse_loss(native_pred[:, :, 0], sd_target), rtol=1e-5, atol=0)
    torch.testing.assert_close(native_loss, sd_loss, rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    "mode, scale, shift", [("sigmoid", 1.0, 1.0), ("sigmoid", 1.7, 1.0), ("uniform", 1.0, 1.0), ("shift", 1.3, 3.0)]
)
def test_sigma_sampling_matches_sd_scripts(sd_steps, mode, scale, shift):
    """sample_sigmas draws kohya's sigmas from the same stream; the model's timestep is sigma (sd-scripts: t/1000)."""
    args = SimpleNamespace(timestep_sampling=mode, sigmoid_scale=scale, discrete_flow_shift=shift, ip_noise_gamma=None)
    latents = torch.zeros(64, 16, 8, 8)
    scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        _, timesteps, sd_sigmas = sd_steps.noising(
            args, scheduler, latents, latents, torch.device("cpu"), torch.float32
        )
    native = sample_sigmas(64, Objective(mode, scale, shift), torch.Generator().manual_seed(11))
    torch.testing.assert_close(native, sd_sigmas.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(native, timesteps / 1000.0, rtol=1e-6, atol=0)
