"""The validation loss: the training objective at fixed noise levels and fixed noise, without gradients.

The number is a pure function of the LoRA weights and the validation set: the noise of each (image,
noise level) is drawn from its own generator seeded by (run seed, image content, level), so the
training generator is never touched, and the same state gives the same number on any resume and
any number of processes. Its record (every epoch's loss and the best epoch) lives in the training
progress, so a resumed run knows the best epoch so far.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.lora_files import lora_file_name
from ..core.train_items import TrainItem

from .components import release_memory
from .data import collate
from .events import Validation, emit
from .loss import Objective, flow_matching_loss

log = logging.getLogger(__name__)

# The midpoints of four equal-probability bins of the training's own noise-level distribution: each
# level stands for a quarter of what the training loss averages over, so their mean estimates the
# expected training loss without its sampling noise, and they span the schedule from mostly-image
# (detail) to mostly-noise (composition). sd-scripts also measures at 4 fixed levels.
SIGMA_QUANTILES = (0.125, 0.375, 0.625, 0.875)
# Images measured: one per this many samples of an epoch, within [MIN_IMAGES, MAX_IMAGES]. A forward
# without gradients costs about a third of a training sample, so 4 levels per image spend ~5 % of an
# epoch (a T4 run of 20 images x 5 repeats measures 4 images: 16 forwards against 100 trained samples).
SAMPLES_PER_IMAGE = 25
MIN_IMAGES, MAX_IMAGES = 4, 16

HELD_OUT, TRAINING_SUBSET = "held-out", "training subset"


def fixed_sigmas(objective: Objective) -> list[float]:
    """The noise levels measured: SIGMA_QUANTILES of the distribution `objective` draws from in training."""
    q = torch.tensor(SIGMA_QUANTILES, dtype=torch.float64)
    if objective.timestep_sampling in ("sigmoid", "shift"):
        sigmas = torch.sigmoid(objective.sigmoid_scale * torch.distributions.Normal(0.0, 1.0).icdf(q))
        if objective.timestep_sampling == "shift":
            shift = objective.discrete_flow_shift
            sigmas = sigmas * shift / (1 + (shift - 1) * sigmas)
    else:  # uniform (the native trainer refuses the other modes before this is reached)
        sigmas = q
    return [round(float(s), 6) for s in sigmas]


def image_limit(samples_per_epoch: int) -> int:
    return min(MAX_IMAGES, max(MIN_IMAGES, samples_per_epoch // SAMPLES_PER_IMAGE))


def image_identity(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def choose(identities: Sequence[str], seed: int, limit: int) -> list[int]:
    """Indices of the `limit` images measured: ranked by (seed, content), so the same images on any resume."""
    rank = sorted(range(len(identities)), key=lambda i: hashlib.sha256(f"{seed}\0{identities[i]}".encode()).hexdigest())
    return sorted(rank[:limit])


def noise_seed(seed: int, identity: str, level: int) -> int:
    return int(np.random.SeedSequence([seed, int(identity[:32], 16), level]).generate_state(1)[0])


@dataclass
class Validator:
    """The validation set of one run: which cache entries, at which noise levels, with which noise seeds."""

    indices: list[int]  # into the training cache (held-out items are appended after the training items)
    identities: list[str]  # image content hashes, parallel to indices
    sigmas: list[float]
    seed: int
    held_out: bool

    @property
    def label(self) -> str:
        n = len(self.indices)
        return f"{HELD_OUT if self.held_out else TRAINING_SUBSET}, {n} image{'s' if n != 1 else ''}"

    @property
    def identity(self) -> str:
        """What a loss is comparable across: the same images, levels and seed."""
        payload = "\0".join([str(self.seed), ",".join(map(str, self.sigmas)), *sorted(self.identities)])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, cache, accelerator) -> float:
        """The mean loss over every (image, level); with several processes each computes a share of the
        pairs into its slots of one vector that is summed, so every process gets the same number, and
        the number one process would get."""
        pairs = [(k, j) for k in range(len(self.indices)) for j in range(len(self.sigmas))]
        device = accelerator.device
        losses = torch.zeros(len(pairs), dtype=torch.float64, device=device)
        net = accelerator.unwrap_model(model)  # no DDP hooks: a forward that only some processes run
        was_training = net.training
        net.eval()
        try:
            for slot in range(accelerator.process_index, len(pairs), accelerator.num_processes):
                k, j = pairs[slot]
                batch = collate([self.indices[k]], cache, None, 0.0, device)
                noise = torch.randn(batch["latents"].shape, dtype=torch.float32,
                                    generator=torch.Generator().manual_seed(noise_seed(self.seed, self.identities[k], j)))
                x0 = batch["latents"]
                sigma = torch.full((x0.shape[0],), self.sigmas[j], device=x0.device, dtype=x0.dtype)
                losses[slot] = flow_matching_loss(net, x0, noise.to(x0.device, x0.dtype), sigma, batch["context"]).double()
        finally:
            net.train(was_training)
        if accelerator.num_processes > 1:
            losses = accelerator.reduce(losses, "sum")  # zeros elsewhere: exact
        return float(losses.mean().item())


def build_validator(items: Sequence[TrainItem], held_out: Sequence[TrainItem], seed: int, objective: Objective,
                    samples_per_epoch: int) -> Validator:
    """The held-out items (cache indices after the training items) or, without any, a fixed few training images."""
    pool = list(held_out) if held_out else list(items)
    offset = len(items) if held_out else 0
    identities = [image_identity(item.image_path) for item in pool]
    chosen = choose(identities, seed, image_limit(samples_per_epoch))
    return Validator(indices=[offset + i for i in chosen], identities=[identities[i] for i in chosen],
                     sigmas=fixed_sigmas(objective), seed=seed, held_out=bool(held_out))  # fmt: skip


# --- the record in TrainingProgress.validation ------------------------------------------------------


def adopt_record(progress, validator: Validator) -> None:
    """Keep the saved record when it was measured on this set; else start a new one (and say so)."""
    record = progress.validation or {}
    if record.get("identity") not in (None, validator.identity) and record.get("history"):
        log.warning("the validation set changed since the saved state (now %s): the best epoch is chosen again "
                    "from this epoch on", validator.label)  # fmt: skip
        record = {}
    progress.validation = {"identity": validator.identity, "label": validator.label,
                           "history": record.get("history", []), "best": record.get("best")}  # fmt: skip


def best_epoch(progress) -> int | None:
    best = (progress.validation or {}).get("best")
    return best["epoch"] if best else None


def best_file(project_name: str, progress, total_epochs: int) -> str | None:
    """The LoRA file of the best epoch: its epoch file, or the final LoRA when the last epoch is the best."""
    epoch = best_epoch(progress)
    if epoch is None:
        return None
    return lora_file_name(project_name, None if epoch >= total_epochs else epoch)


def metadata(progress) -> dict[str, str]:
    """LoRA metadata: this file's validation loss (the newest epoch's) and the set it was measured on."""
    record = progress.validation or {}
    history = record.get("history") or []
    if not history:
        return {}
    meta = {"anima_validation_loss": f"{history[-1]['loss']:.6g}", "anima_validation_set": record.get("label", "")}
    if record.get("best"):
        meta["anima_validation_best_epoch"] = str(record["best"]["epoch"])
    return meta


def validate(s) -> Validation | None:
    """At an epoch's end (s.progress.epoch just counted it): measure, record, log and emit; None without a validator."""
    validator: Validator | None = getattr(s, "validation", None)
    if validator is None:
        return None
    p = s.progress
    try:
        loss = validator.measure(s.model, s.cache, s.accelerator)
    except Exception as exc:  # noqa: BLE001 - the measurement must not end the training
        if s.accelerator.num_processes > 1:
            raise  # the peers wait in the measurement's all-reduce: the run must end for all of them
        log.warning("validation loss at epoch %d could not be measured (%s: %s); training goes on without it",
                    p.epoch, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        release_memory()
        return None
    record: dict[str, Any] = p.validation
    # A state saved mid-epoch and resumed measures this epoch once: a re-run replaces its own line.
    record["history"] = [h for h in record.get("history", []) if h["epoch"] != p.epoch]
    record["history"].append({"step": p.global_step, "epoch": p.epoch, "loss": loss})
    # A tie goes to the earlier epoch; a NaN/inf loss never names the best.
    best = record["best"] = min((h for h in record["history"] if math.isfinite(h["loss"])),
                                key=lambda h: (h["loss"], h["epoch"]), default=None)  # fmt: skip
    log.info("validation loss %.4f at epoch %d (%s)%s", loss, p.epoch, validator.label,
             f"; best: epoch {best['epoch']} ({best['loss']:.4f})" if best else "")  # fmt: skip
    return emit(s.sink, Validation(step=p.global_step, epoch=p.epoch, loss=loss, images=len(validator.indices),
                                   held_out=validator.held_out, best_epoch=best["epoch"] if best else None,
                                   best_loss=best["loss"] if best else None))  # fmt: skip
