"""The training step reads nothing back from the device (what CUDA graphs and a busy GPU need): counted on the
CPU during the real loop, trainer.loop.train, step by step; the optimizer built for cuda-graphs likewise; on a GPU,
under torch.cuda's sync debug mode."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.overrides import TorchFunctionMode

from anima_lora_flow.config import TrainingConfig
from anima_lora_flow.effective import Machine
from anima_lora_flow.trainer.backend import TrainJob
from anima_lora_flow.trainer.loop import LOG_EVERY, build_optimizer, train
from anima_lora_flow.trainer.run import build_session, effective_numbers

# Every way a tensor's value reaches Python: each waits for the device to finish the work before it.
HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy}  # fmt: skip


class HostReads(TorchFunctionMode):
    """Counts host reads of tensor values, except `exempt(tensor)`; keeps where each happened."""

    def __init__(self, exempt=lambda tensor: False):
        super().__init__()
        self.exempt, self.count, self.where = exempt, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS and not self.exempt(args[0]):
            import traceback

            self.count += 1
            self.where.append(f"{func.__name__}: " + "".join(traceback.format_stack(limit=4)[:-1]))
        return func(*args, **(kwargs or {}))


def test_no_host_read_inside_a_step_except_the_periodic_loss(items, tiny_model, tmp_path, tiny_config):
    # 3 images x 4 repeats at batch 1: one epoch of 12 steps, with caption dropout and grad clipping on.
    items = [type(i)(i.image_path, i.caption, i.bucket, repeats=4) for i in items]
    cfg = TrainingConfig(**tiny_config(max_train_epochs=1, caption_dropout=0.3, max_grad_norm=1.0, compile_mode="none"))
    job = TrainJob(config=cfg.model_dump(), items=[i.to_json() for i in items], models_dir=str(tiny_model),
                   work_dir=str(tmp_path / "work"), output_dir=str(tmp_path / "out"), dataset_fingerprint="ds")  # fmt: skip
    session = build_session(job, cfg, items, tiny_model, effective_numbers(items, cfg, Machine()))

    def optimizer_step_count(tensor) -> bool:
        # AdamW without capturable=True keeps its step count as a host tensor (on the CPU even when training on
        # CUDA): reading it waits for nothing. The cuda-graphs optimizer has none (next test).
        return any(tensor is state.get("step") for state in session.optimizer.state.values())

    reads = HostReads(exempt=optimizer_step_count)
    after_step: list[int] = []
    session.stop_requested = lambda: after_step.append(reads.count) and False  # called once after every step
    with reads:
        train(session)
    per_step = {step: b - a for step, (a, b) in enumerate(itertools.pairwise(after_step), start=2)}
    assert len(per_step) == 11
    # The loss read-out, one .item(), every LOG_EVERY steps and at the last step; nothing else.
    expected = {step: 1 if step % LOG_EVERY == 0 or step == 12 else 0 for step in per_step}
    assert per_step == expected, "\n".join(reads.where)


def test_the_cuda_graphs_optimizer_steps_without_a_host_read(tiny_config):
    cfg = TrainingConfig(**tiny_config())
    from anima_lora_flow.core.train_items import TrainItem

    eff = effective_numbers([TrainItem("x.png", "", (256, 256))], cfg, Machine()).model_copy(update={"compile_mode": "cuda-graphs"})
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    optimizer = build_optimizer(params, cfg, eff)
    assert optimizer.defaults["fused"] and optimizer.defaults["capturable"]
    reads = HostReads()
    with reads:
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()
    assert reads.count == 0, "\n".join(reads.where)
    assert all(state["step"].device == params[0].device for state in optimizer.state.values())


class _Enough(Exception):
    """Ends the run from the stop hook before the last step's loss read-out and the epoch-end saves."""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_mode", ["none", "cuda-graphs"])
def test_on_cuda_steps_run_under_the_sync_debug_mode_error(items, tiny_model, tmp_path, tiny_config, monkeypatch, compile_mode):
    """torch.cuda's own check: any synchronising call inside steps 4 to 11 raises (steps 1 to 3 compile and capture)."""
    monkeypatch.setattr("anima_lora_flow.trainer.loop.LOG_EVERY", 1000)  # no read-out inside the checked steps
    items = [type(i)(i.image_path, i.caption, i.bucket, repeats=4) for i in items]
    cfg = TrainingConfig(**tiny_config(max_train_epochs=1, caption_dropout=0.3, max_grad_norm=1.0, compile_mode=compile_mode))
    job = TrainJob(config=cfg.model_dump(), items=[i.to_json() for i in items], models_dir=str(tiny_model),
                   work_dir=str(tmp_path / "work"), output_dir=str(tmp_path / "out"), dataset_fingerprint="ds")  # fmt: skip
    session = build_session(job, cfg, items, tiny_model, effective_numbers(items, cfg))
    assert session.accelerator.device.type == "cuda" and session.effective.compile_mode == compile_mode
    steps = itertools.count(1)

    def after_step() -> bool:
        step = next(steps)
        if step == 3:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        if step == 11:
            torch.cuda.set_sync_debug_mode("default")
            raise _Enough
        return False

    session.stop_requested = after_step
    try:
        with pytest.raises(_Enough):
            train(session)
    finally:
        torch.cuda.set_sync_debug_mode("default")
