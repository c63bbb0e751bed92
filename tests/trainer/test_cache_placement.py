"""Where the training cache lives while training (trainer/cache.py): the decision in numbers, and the CPU case."""

from __future__ import annotations

import pytest
import torch

from anima_lora_flow.trainer.cache import DEVICE_CACHE_SHARE, TrainingCache, cache_bytes, cache_placement, place_cache
from anima_lora_flow.trainer.data import collate

MB, GB = 10**6, 10**9


def _cache() -> TrainingCache:
    # 768 px: latents 16 x 1 x 96 x 96 fp32 (589,824 bytes); contexts trimmed to their T5 tokens, 1024 wide, fp32
    return TrainingCache(latents=[torch.zeros(16, 1, 96, 96) for _ in range(3)],
                         contexts=[torch.zeros(n, 1024) for n in (32, 100, 7)], empty_context=torch.zeros(1, 1024),
                         context_length=512)  # fmt: skip


def test_cache_bytes_counts_latents_and_trimmed_contexts():
    assert cache_bytes(_cache()) == 3 * 16 * 96 * 96 * 4 + (32 + 100 + 7 + 1) * 1024 * 4


def test_a_shared_caption_counts_once():
    cache = _cache()
    cache.contexts = [cache.contexts[0]] * 3  # three images, one caption (build_cache shares the tensor)
    assert cache_bytes(cache) == 3 * 16 * 96 * 96 * 4 + (32 + 1) * 1024 * 4


@pytest.mark.parametrize(
    ("nbytes", "device", "free", "expected"),
    [
        (160 * MB, "cuda", 70 * GB, "device"),  # 100 images at 768 px on an H100 after the model: 0.2 % of it
        (160 * MB, "cuda", 8 * GB, "device"),  # the same on a T4 with fp16 weights loaded: 2 %
        (800 * MB, "cuda", 8 * GB, "device"),  # exactly the share: still on the device
        (801 * MB, "cuda", 8 * GB, "pinned"),  # past it: the activations keep their memory
        (20 * GB, "cuda", 70 * GB, "pinned"),  # a dataset of 12,000 images
        (160 * MB, "cpu", None, "host"),  # no CUDA: the host is the device
        (1, "mps", 10 * GB, "host"),
    ],
)
def test_placement_by_the_numbers(nbytes, device, free, expected):
    assert DEVICE_CACHE_SHARE == 0.1
    assert cache_placement(nbytes, device, free) == expected


def test_on_the_cpu_the_cache_stays_as_it_is_and_batches_are_unchanged():
    cache = _cache()
    before = collate([0, 1], cache, torch.Generator().manual_seed(0), 0.5, torch.device("cpu"))
    latents = list(cache.latents)
    assert place_cache(cache, torch.device("cpu")) == "host"
    assert all(a is b for a, b in zip(cache.latents, latents))  # not copied
    after = collate([0, 1], cache, torch.Generator().manual_seed(0), 0.5, torch.device("cpu"))
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_small_cache_moves_once_and_gives_the_same_batches():
    cpu_cache, cuda_cache, device = _cache(), _cache(), torch.device("cuda")
    assert place_cache(cuda_cache, device) == "device"
    assert all(t.is_cuda for t in [*cuda_cache.latents, *cuda_cache.contexts, cuda_cache.empty_context])
    shared = _cache()
    shared.contexts = [shared.contexts[0]] * 3
    place_cache(shared, device)
    assert shared.contexts[0] is shared.contexts[2]  # one device copy of a shared caption
    expected = collate([0, 2], cpu_cache, torch.Generator(device).manual_seed(0), 0.5, device)
    got = collate([0, 2], cuda_cache, torch.Generator(device).manual_seed(0), 0.5, device)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
