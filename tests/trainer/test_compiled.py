"""The compiled step (trainer/compiled.py): no graph breaks, eager's numbers, one compilation per bucket shape,
and cuda-graphs refused without CUDA."""

from __future__ import annotations

import pytest
import torch

from anima_lora_flow.errors import UserInputError
from anima_lora_flow.trainer.cache import TrainingCache
from anima_lora_flow.trainer.compiled import batch_shapes, check_compile_mode, graph_breaks, loss_function
from anima_lora_flow.trainer.components import build_transformer
from anima_lora_flow.trainer.lora import build_lora_model, lora_parameters
from anima_lora_flow.trainer.loss import Objective, compute_loss


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test's model is a new object, a new cache entry on flow_matching_loss's code: without a reset,
    the recompile limit would be spent across tests and later ones would silently run eagerly."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(tiny_model, gradient_checkpointing: bool):
    model = build_lora_model(build_transformer(tiny_model, torch.float32, gradient_checkpointing), 4, 4, seed=0)
    with torch.no_grad():  # B = 0 (the init) would make every lora_A gradient 0 and the comparison empty
        g = torch.Generator().manual_seed(1)
        for param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return model.train()


def _batch(h: int, w: int, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(h * 100 + w)
    return {"latents": torch.randn(batch, 16, 1, h, w, generator=g), "context": torch.randn(batch, 16, 32, generator=g)}


def _loss_and_grads(model, batch, function) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute_loss(model, batch, Objective(), torch.Generator().manual_seed(5), function)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in lora_parameters(model)]


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_the_step_compiles_as_one_graph(tiny_model, gradient_checkpointing):
    assert graph_breaks(_model(tiny_model, gradient_checkpointing), _batch(8, 8), Objective()) == 0


def test_the_step_through_accelerates_bf16_autocast_compiles_as_one_graph(tiny_model):
    """On a GPU the model the loop calls is accelerate's: its forward wrapped in autocast and an fp32 cast."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one process-wide state; this test wants bf16
    try:
        model = Accelerator(mixed_precision="bf16", cpu=True).prepare(
            build_lora_model(build_transformer(tiny_model, torch.bfloat16, False), 4, 4, seed=0))
        assert "convert_outputs_to_fp32" in repr(model.forward)  # the wrapper is there
        assert graph_breaks(model, _batch(8, 8, batch=1), Objective()) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_compiled_loss_and_gradients_equal_eager(tiny_model):
    """Inductor's CPU code against eager, on one bucket (each compilation costs tens of seconds of g++)."""
    model = _model(tiny_model, gradient_checkpointing=False)
    names = [n for n, _ in model.named_parameters()]
    eager_loss, eager_grads = _loss_and_grads(model, _batch(8, 8), loss_function("none", torch.device("cpu")))
    loss, grads = _loss_and_grads(model, _batch(8, 8), loss_function("model", torch.device("cpu")))
    # Inductor fuses the elementwise work and reorders fp32 reductions (norms, softmax, the MSE mean): each
    # reordering rounds differently, by about fp32's 1.2e-7 relative per operation. Through two blocks, forward
    # and backward, that stays near 1e-6 relative; 1e-4 leaves room for other CPUs' vector widths. A real
    # difference (another noise level, a missing mask, a dropped LoRA scale) moves the loss and the gradients
    # by far more than 1 %.
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-6)
    assert len(grads) == len(eager_grads) and all(g.abs().sum() > 0 for g in grads)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert [n for n, _ in model.named_parameters()] == names  # state and LoRA files keep their keys


def test_each_bucket_shape_compiles_once_and_keeps_its_graph(tiny_model):
    from torch._dynamo.utils import counters

    model = _model(tiny_model, gradient_checkpointing=False)
    compiled = loss_function("model", torch.device("cpu"), shapes=3, backend="eager")  # dynamo's side only
    counters.clear()
    for h, w in ((8, 8), (8, 12), (8, 10), (8, 8), (8, 12)):
        _loss_and_grads(model, _batch(h, w), compiled)
    # Static: the third shape is a graph of its own (dynamo's automatic dynamic shapes would have reused a
    # dynamic second graph, which CUDA graphs cannot replay); the repeated shapes reuse theirs.
    assert counters["stats"]["unique_graphs"] == 3


def test_batch_shapes_counts_one_compilation_per_bucket_and_short_batch():
    sides = [(8, 8)] * 5 + [(8, 12)] * 4 + [(12, 8)] * 2 + [(6, 10)] * 3
    cache = TrainingCache(latents=[torch.zeros(16, 1, h, w) for h, w in sides], contexts=[], empty_context=torch.zeros(1, 4),
                          context_length=4)  # fmt: skip
    first = {side: sides.index(side) for side in dict.fromkeys(sides)}
    count = {side: sides.count(side) for side in first}
    batches = [[first[side]] * min(2, count[side] - i) for side in first for i in range(0, count[side], 2)]
    # batch 2: 5 -> 2,2,1; 4 -> 2,2; 2 -> 2; 3 -> 2,1: four buckets, two with a short last batch
    assert batch_shapes(batches, cache) == {
        (2, 16, 1, 8, 8), (1, 16, 1, 8, 8), (2, 16, 1, 8, 12), (2, 16, 1, 12, 8), (2, 16, 1, 6, 10), (1, 16, 1, 6, 10)
    }  # fmt: skip


def test_cuda_graphs_are_refused_without_cuda():
    with pytest.raises(UserInputError, match="--compile-mode cuda-graphs needs a CUDA GPU") as err:
        check_compile_mode("cuda-graphs", torch.device("cpu"))
    assert err.value.field == "compile_mode"
    check_compile_mode("model", torch.device("cpu"))  # inductor compiles for the CPU too


@pytest.mark.slow
def test_a_compiled_run_trains_the_same_lora_as_an_eager_one(items, tiny_model, tmp_path, tiny_config):
    """The real loop (run_training) with compile_mode model: the same file keys and the same weights within rounding.

    3 steps at lr 1e-3 move the weights by about 3e-3 each; the step's 1e-6 relative rounding (the test above)
    passes through AdamW's m / sqrt(v) nearly unchanged, so the files differ by about 1e-8 (measured: at most
    3.4e-8 absolute). atol 1e-6 is 30 times that and 0.03 % of a step's move; a wrong loss or draw would move
    the weights by the whole step."""
    from anima_lora_flow.trainer.backend import TrainJob
    from anima_lora_flow.trainer.lora import load_lora_file
    from anima_lora_flow.trainer.run import run_training

    def run(mode: str) -> dict[str, torch.Tensor]:
        job = TrainJob(config=tiny_config(max_train_epochs=1, compile_mode=mode), items=[i.to_json() for i in items],
                       models_dir=str(tiny_model), work_dir=str(tmp_path / "work"), output_dir=str(tmp_path / mode))  # fmt: skip
        return load_lora_file(run_training(job).final_lora)

    eager, compiled = run("none"), run("model")
    assert eager.keys() == compiled.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-3, atol=1e-6)


def test_a_compiler_failure_costs_speed_not_the_run(tiny_model, caplog):
    """The planner sends GPUs to whole-model compilation; a compiler bug there must leave the step eager."""

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("inductor could not build this graph")

    model = _model(tiny_model, gradient_checkpointing=False)
    eager_loss, eager_grads = _loss_and_grads(model, _batch(8, 8), loss_function("none", torch.device("cpu")))
    falling_back = loss_function("model", torch.device("cpu"), backend=broken_backend)
    with caplog.at_level("WARNING", logger="anima_lora_flow.trainer.compiled"):
        loss, grads = _loss_and_grads(model, _batch(8, 8), falling_back)
        again, _ = _loss_and_grads(model, _batch(8, 8), falling_back)  # no second attempt, no second warning
    assert torch.equal(loss, eager_loss) and torch.equal(again, eager_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, eager_grads))
    warnings = [r.getMessage() for r in caplog.records if "compiling the step failed" in r.getMessage()]
    assert len(warnings) == 1 and "inductor could not build this graph" in warnings[0]
