"""The compiled training step: the whole forward + loss as one inductor graph per bucket shape.

compile_mode (Effective.compile_mode, already resolved, never "auto"):
- "none": eager.
- "blocks": each DiT block compiled on its own (components.speed_up_transformer; CUDA only).
- "model": loss.flow_matching_loss compiled whole, model and loss together, with zero graph breaks
  (tests/trainer/test_compiled.py asks dynamo's own explain). The function around the model is compiled,
  not a wrapper module, so parameter names (state and LoRA files) stay those of the eager model.
- "cuda-graphs": "model" in torch.compile's "reduce-overhead" mode: the forward and backward graphs are
  replayed as CUDA graphs, which needs static shapes and a step without host syncs (trainer/loop.py).
  CUDA only: refused elsewhere by check_compile_mode.

Shapes are static (dynamic=False): CUDA graphs replay one fixed shape, and a dynamic graph would be a
slower kernel for every bucket. Each (batch, latent height, latent width) the data holds is compiled
once, when its first batch arrives; the graphs of shapes already seen stay cached, so a new bucket
compiles only itself. A dataset of 4 buckets costs 4 compilations, plus one for each bucket whose
sample count is not a multiple of the batch size (its short last batch is another shape): at most 8.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable

import torch

from ..core.step_model import cuda_graphs_need_cuda
from ..errors import UserInputError

from .cache import TrainingCache
from .loss import LossFunction, Objective, draw_noise, flow_matching_loss

log = logging.getLogger(__name__)

COMPILE_MODES = ("none", "blocks", "model", "cuda-graphs")
WHOLE_MODEL_MODES = ("model", "cuda-graphs")


def check_compile_mode(mode: str, device: torch.device) -> None:
    """Refuse a compile mode this device cannot run.

    Raises:
        UserInputError: "cuda-graphs" without a CUDA device (CUDA graphs exist only there).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be resolved to one of {COMPILE_MODES}, got {mode!r}")
    if mode == "cuda-graphs" and torch.device(device).type != "cuda":
        raise UserInputError(cuda_graphs_need_cuda(), field="compile_mode")


def loss_function(mode: str, device: torch.device, shapes: int = 1, backend: str = "inductor") -> LossFunction:
    """The step's forward + loss for `mode`: flow_matching_loss itself, or compiled whole.

    `shapes` is how many batch shapes the data holds (batch_shapes): dynamo's recompile limit is
    raised to it, since past that limit dynamo silently runs every further bucket eagerly. `backend`
    is torch.compile's; tests pass "eager" to check dynamo's side (graphs, guards) in seconds.

    Raises:
        UserInputError: see check_compile_mode.
    """
    check_compile_mode(mode, device)
    if mode not in WHOLE_MODEL_MODES:
        return flow_matching_loss  # "blocks" compiles inside the model (components.speed_up_transformer)
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, shapes)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * shapes)
    compiled = torch.compile(flow_matching_loss, dynamic=False, backend=backend,
                             mode="reduce-overhead" if mode == "cuda-graphs" else None)  # fmt: skip
    log.info("compile_mode %s: the forward and loss compile once per batch shape (%d in this dataset)", mode, shapes)
    compiled = eager_if_compiling_fails(compiled, mode)
    if mode == "model":
        return compiled

    @functools.wraps(flow_matching_loss)
    def graphed(*args: torch.Tensor) -> torch.Tensor:
        # A new replay may overwrite the previous one's outputs; the loop keeps only values derived from
        # them (loss * weight) and has run their backward by now.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return graphed


def eager_if_compiling_fails(compiled: LossFunction, mode: str) -> LossFunction:
    """`compiled`, or flow_matching_loss itself from the first shape the compiler fails on.

    The planner picks whole-model compilation for GPUs where it has never been run by this project;
    a compiler bug there must cost speed, not the session. A failure happens while the graph is built,
    before anything of the step has run, so the same call made eagerly gives the step's true loss (the
    random draws were made outside). Out-of-memory and errors of the model itself are not caught.
    """
    failed: list[str] = []

    @functools.wraps(flow_matching_loss)
    def step(*args: torch.Tensor) -> torch.Tensor:
        if failed:
            return flow_matching_loss(*args)
        try:
            return compiled(*args)
        except (torch._dynamo.exc.BackendCompilerFailed, torch._dynamo.exc.InternalTorchDynamoError) as exc:
            cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # the compiler's own error
            failed.append(f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}")
            log.warning("compile_mode %s: compiling the step failed (%s); the run goes on eagerly (slower, same "
                        "numbers). Set compile_mode = none to skip the attempt", mode, failed[0][:300])
            return flow_matching_loss(*args)

    return step


def batch_shapes(batches: Iterable[list[int]], cache: TrainingCache) -> set[tuple[int, ...]]:
    """The distinct latent batch shapes (batch, 16, 1, h, w) of `batches`: one compilation each."""
    return {(len(batch), *cache.latents[batch[0]].shape) for batch in batches if batch}


def graph_breaks(model: torch.nn.Module, batch: dict[str, torch.Tensor], objective: Objective) -> int:
    """How many graph breaks dynamo finds in the compiled step (forward + loss) on `batch`; 0 is the goal.

    The noise and noise levels are drawn as the loop draws them, from a generator on the batch's device.
    """
    x0 = batch["latents"]
    generator = torch.Generator(device=x0.device).manual_seed(0)
    noise, sigmas = draw_noise(x0, objective, generator)
    explained = torch._dynamo.explain(flow_matching_loss)(model, x0, noise, sigmas, batch["context"])
    for reason in explained.break_reasons:
        log.warning("graph break: %s", reason.reason)
    return explained.graph_break_count
