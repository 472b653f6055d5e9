"""coreset_attention (FaceCoresetNet) speed: linear in the set size; batched vs one set at a time.

* ``test_time_vs_set_size``: one set of N = 10 ... 100,000 elements (eval, CPU, 1 thread so the
  figures are stable on a shared machine); ``test_scaling_is_linear`` asserts
  time(100k)/time(10k) < 15 for the aggregator itself (``validate_args=False``) and reports the
  figure with the host's input validation too.
* ``test_ijbc_size_mix``: an IJB-C-like size mix (lognormal sizes, mean ~20, median 9, tail to
  800, drawn for 23,124 templates, of which a random 1,000 are timed to keep the run short; the
  size distribution is kept), batched ``aggregate_ragged`` vs the official way (one set at a
  time, batch 1, with :class:`OfficialCoresetReference`, i.e. ``nn.MultiheadAttention`` and
  unfolded projections) and vs this module at batch 1, same descriptors asserted, speed-ups
  printed. Measured on 1 thread (stable) and printed for torch's default thread count (on a
  shared 2-core machine those timings swing by 10x from run to run). Asserted >= 3x vs the
  reference on 1 thread (a regression guard; the issue's 10x target is not reached on 1
  thread, see the README).

Run: ``python -m pytest tests/benchmarks/test_bench_coreset.py --benchmark-only -s``.
Timings depend on the machine's load; the ratio is measured side by side in one process.
"""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from aggregators.coreset import CoresetAttentionAggregator
from aggregators.coreset_reference import OfficialCoresetReference
from facecoreset_plugin import RaggedSets

DIM = 512
IJBC_TEMPLATES = 23124
TIMED_TEMPLATES = 1000


def _model() -> CoresetAttentionAggregator:
    torch.manual_seed(0)
    model = CoresetAttentionAggregator().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _one_set(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(1, n, DIM, generator=g), dim=-1)
    return f, torch.rand(1, n, generator=g) * 30 + 1


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch threads (None: leave the default), restoring it afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("n", [10, 100, 1_000, 10_000, 100_000])
def test_time_vs_set_size(benchmark, n):
    model = _model()
    f, norms = _one_set(n)
    rounds = 20 if n <= 1_000 else 5 if n <= 10_000 else 3
    with torch.no_grad(), _threads(1):
        benchmark.pedantic(model.embed, args=(f, norms), rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["set_size"] = n


def test_scaling_is_linear(benchmark):
    model = _model()
    sets = {n: _one_set(n) for n in (10_000, 100_000)}
    report = {}
    with torch.no_grad(), _threads(1):
        for validate in (True, False):
            model.validate_args = validate
            times = {n: _best_of(lambda fn=sets[n]: model.embed(*fn), 3) for n in sets}
            report[validate] = (times[10_000], times[100_000], times[100_000] / times[10_000])
        benchmark.pedantic(model.embed, args=sets[100_000], rounds=1, iterations=1)
    for validate, (t10, t100, ratio) in report.items():
        tag = "with input validation" if validate else "aggregator only"
        benchmark.extra_info[tag] = {"t_10k_s": t10, "t_100k_s": t100, "ratio": ratio}
        print(f"\ncoreset_attention one set, 1 thread, {tag}: 10k {t10:.3f}s, 100k {t100:.3f}s, ratio {ratio:.2f}")
    ratio = report[False][2]
    assert ratio < 15, f"time(100k)/time(10k) = {ratio:.1f}, not linear"


def ijbc_like_sizes(num_templates: int = IJBC_TEMPLATES, seed: int = 0) -> torch.Tensor:
    """Template sizes with IJB-C's shape: lognormal, mean ~20 images, median 9, max 800."""
    g = torch.Generator().manual_seed(seed)
    return torch.exp(torch.randn(num_templates, generator=g) * 1.25 + 2.2).round().clamp(1, 800).long()


def test_ijbc_size_mix(benchmark):
    all_sizes = ijbc_like_sizes()
    g = torch.Generator().manual_seed(1)
    sizes = all_sizes[torch.randperm(len(all_sizes), generator=g)[:TIMED_TEMPLATES]]
    total = int(sizes.sum())
    feats = torch.nn.functional.normalize(torch.randn(total, DIM, generator=g), dim=-1)
    norms = torch.rand(total, generator=g) * 30 + 1
    offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(sizes, 0)
    sets = RaggedSets(feats, norms, offsets)
    model = _model()
    ref = OfficialCoresetReference.from_aggregator(model)

    def one_at_a_time(limit: int | None = None) -> torch.Tensor:
        bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))[:limit]
        with torch.no_grad():
            return torch.cat([ref(feats[None, a:b], norms[None, a:b])[0] for a, b in bounds])

    def ours_one_at_a_time() -> torch.Tensor:
        bounds = zip(offsets[:-1].tolist(), offsets[1:].tolist())
        with torch.no_grad():
            return torch.cat([model(feats[None, a:b], norms[None, a:b]) for a, b in bounds])

    with _threads(1):
        one_at_a_time(50)  # warm-up
        start = time.perf_counter()
        want = one_at_a_time()
        t_ref = time.perf_counter() - start
        start = time.perf_counter()
        ours_single = ours_one_at_a_time()
        t_ours_single = time.perf_counter() - start
        got, _ = model.aggregate_ragged(sets)
        t_batched = _best_of(lambda: model.aggregate_ragged(sets), 3)
        benchmark.pedantic(model.aggregate_ragged, args=(sets,), rounds=1, iterations=1)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    torch.testing.assert_close(ours_single, want, rtol=0, atol=2e-6)
    speedup, speedup_own = t_ref / t_batched, t_ours_single / t_batched
    full = t_batched * all_sizes.sum().item() / total
    benchmark.extra_info.update({
        "templates": len(sizes), "images": total, "max_size": int(sizes.max()), "threads": 1,
        "t_reference_one_at_a_time_s": t_ref, "t_ours_one_at_a_time_s": t_ours_single, "t_batched_s": t_batched,
        "speedup_vs_reference": speedup, "speedup_vs_ours_batch1": speedup_own, "full_ijbc_batched_s_estimate": full})
    print(f"\nIJB-C-like mix, {len(sizes)} templates / {total} images (mean {total / len(sizes):.1f}, "
          f"max {int(sizes.max())}), 1 thread: official-style reference one at a time {t_ref:.2f}s, "
          f"this module one at a time {t_ours_single:.2f}s, batched {t_batched:.3f}s; speed-up "
          f"{speedup:.1f}x vs the reference, {speedup_own:.1f}x vs batch 1 of this module; full IJB-C size "
          f"({all_sizes.sum().item()} images) batched ~{full:.1f}s")
    with _threads(None) as used:  # torch's default (2 on the 2-core machine): printed, not asserted
        if used > 1:
            start = time.perf_counter()
            one_at_a_time()
            t_ref_mt = time.perf_counter() - start
            t_batched_mt = _best_of(lambda: model.aggregate_ragged(sets), 3)
            benchmark.extra_info[f"threads={used}"] = {
                "t_reference_one_at_a_time_s": t_ref_mt, "t_batched_s": t_batched_mt,
                "speedup_vs_reference": t_ref_mt / t_batched_mt}
            print(f"{used} threads: reference one at a time {t_ref_mt:.2f}s, batched {t_batched_mt:.3f}s, "
                  f"speed-up {t_ref_mt / t_batched_mt:.1f}x (swings with the machine's load)")
    # regression guard: on 1 thread the per-set K*D^2 projections bound the gain (see the README)
    assert speedup >= 3, f"batched is only {speedup:.1f}x faster than the one-at-a-time reference"
