"""Training throughput of coreset_attention (sets/s): sampler + forward + backward + AdamW step.

Run with ``python -m pytest tests/benchmarks/test_bench_training.py --benchmark-only``; the
sets/s figure is in each benchmark's ``extra_info``. Batch: 20 sets of 1..20 elements, D=512,
an AdaFace head over 2,000 identities (the paper's per-GPU batch).
"""

from __future__ import annotations

import pytest
import torch

from aggregators.training.bank import FeatureBank
from aggregators.training.heads import MarginHead
from aggregators.training.sampler import SamplerConfig, SetSampler
from facecoreset_plugin import load

IDS, PER_ID, DIM, SETS = 2000, 10, 512, 20


@pytest.fixture(scope="module")
def bank() -> FeatureBank:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(IDS).repeat_interleave(PER_ID)
    feats = torch.nn.functional.normalize(torch.randn(len(labels), DIM, generator=g), dim=-1)
    return FeatureBank(feats, 5 + 30 * torch.rand(len(labels), generator=g), labels)


def test_bench_sampler(benchmark, bank):
    sampler = SetSampler(bank, SamplerConfig(sets_per_batch=SETS), seed=0)
    steps = iter(range(10**9))
    benchmark.pedantic(lambda: sampler.batch(next(steps)), rounds=30, iterations=1, warmup_rounds=2)
    benchmark.extra_info["sets_per_s"] = SETS / benchmark.stats.stats.mean


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_bench_train_step(benchmark, bank, device):
    torch.manual_seed(0)
    model = load("coreset_attention").to(device).train()
    model.validate_args = False
    head = MarginHead(DIM, IDS).to(device).train()
    opt = torch.optim.AdamW(model.param_groups(1e-3) + [{"params": [head.kernel]}], lr=1e-4)
    sampler = SetSampler(bank, SamplerConfig(sets_per_batch=SETS), seed=0)
    steps = iter(range(10**9))

    def step():
        b = sampler.batch(next(steps)).to(device)
        unit, norm = model.embed(b.features, b.norms, b.mask)
        loss = torch.nn.functional.cross_entropy(head(unit, norm, b.targets), b.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [head.kernel], 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=10 if device == "cpu" else 50, iterations=1, warmup_rounds=2)
    benchmark.extra_info["sets_per_s"] = SETS / benchmark.stats.stats.mean
