"""Backbone throughput (images/s): ir_18 / ir_50 on CPU, ir_101 with AMP on CUDA when present; alignment.

Run with ``python -m pytest tests/benchmarks/test_bench_backbones.py --benchmark-only``; the
images/s figure is in each benchmark's ``extra_info``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facecoreset_plugin import load_backbone
from facecoreset_plugin.backbones.align import TEMPLATE_112, align_face

BATCH = 32


def _bench_backbone(benchmark, name: str, device: str, amp: bool, rounds: int) -> None:
    torch.manual_seed(0)
    net = load_backbone(name).to(device)
    imgs = torch.randint(0, 256, (BATCH, 3, 112, 112), dtype=torch.uint8, device=device)
    dtype = torch.float16 if device == "cuda" else torch.bfloat16

    def step():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=amp):
            out = net.embed_images(imgs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    step()  # warm-up (allocations, cuDNN autotune)
    out = benchmark.pedantic(step, rounds=rounds, iterations=1)
    assert out.shape == (BATCH, 512) and torch.isfinite(out).all()
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean
    benchmark.extra_info["batch"] = BATCH
    benchmark.extra_info["threads"] = torch.get_num_threads()


@pytest.mark.parametrize("name", ["ir_18", "ir_50"])
def test_bench_cpu_images_per_second(benchmark, name):
    _bench_backbone(benchmark, name, "cpu", amp=False, rounds=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [False, True])
def test_bench_cuda_ir101(benchmark, amp):
    torch.backends.cudnn.benchmark = True
    _bench_backbone(benchmark, "ir_101", "cuda", amp=amp, rounds=20)


def test_bench_alignment_per_image(benchmark):
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 256, size=(3, 200, 180), dtype=np.uint8))
    landmarks = (TEMPLATE_112 * 1.3 + 20).astype(np.float32)
    out = benchmark(align_face, img, landmarks)
    assert out.shape == (3, 112, 112)
    benchmark.extra_info["images_per_s"] = 1.0 / benchmark.stats.stats.mean
