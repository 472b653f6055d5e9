"""TAR@FAR at IJB-C scale (15,658,489 pair scores, 19,557 genuine): ours vs sklearn vs torchmetrics.

Run with ``pytest tests/benchmarks/test_bench_metrics.py --benchmark-only -s``; the printed lines
give the times, the speed-up over sklearn's ``roc_curve`` + nearest-FPR selection (the published
pipeline), and the peak memory of our path measured in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from eval_protocols.metrics import FARS, far_key, verification_report

NUM_PAIRS = 15_658_489
NUM_GENUINE = 19_557

_MAKE_SCORES = """
import numpy as np
def make_scores(seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 0.08, {n}).astype(np.float32)
    quality = rng.uniform(0.2, 1.0, {g})
    scores[:{g}] = (rng.normal(0.65, 0.12, {g}) * quality).astype(np.float32)
    labels = np.zeros({n}, dtype=np.int8)
    labels[:{g}] = 1
    order = rng.permutation({n})
    return scores[order], labels[order]
""".format(n=NUM_PAIRS, g=NUM_GENUINE)
exec(_MAKE_SCORES)  # defines make_scores; the memory probe below runs the same text


def nearest_tars(fpr: np.ndarray, tpr: np.ndarray) -> dict[str, float]:
    """The published selection: nearest FPR on sklearn's curve, ties to the largest TPR."""
    out = {}
    for far in FARS:
        dist = np.abs(fpr - far)
        out[far_key(far)] = float(tpr[np.flatnonzero(dist == dist.min())[-1]])
    return out


@pytest.fixture(scope="module")
def pairs():
    scores, labels = make_scores()
    return scores, labels


@pytest.fixture(scope="module")
def sklearn_result(pairs):
    from sklearn.metrics import roc_curve

    scores, labels = pairs
    t0 = time.perf_counter()
    fpr, tpr, _ = roc_curve(labels, scores)
    tars = nearest_tars(fpr, tpr)
    return tars, time.perf_counter() - t0


def test_bench_exact_tar_at_far(benchmark, pairs, sklearn_result):
    scores, labels = pairs
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    report = benchmark.pedantic(verification_report, args=(s, y), rounds=2, iterations=1)
    ref_tars, ref_seconds = sklearn_result
    assert report["tar_at_far"]["nearest"] == ref_tars
    ours = benchmark.stats.stats.min
    benchmark.extra_info.update(sklearn_seconds=ref_seconds, speedup=ref_seconds / ours)
    print(f"\n[metrics] {NUM_PAIRS:,} scores: verification_report {ours:.2f} s (full report: both rules, "
          f"AUC, EER, plot curve); sklearn roc_curve + nearest {ref_seconds:.2f} s; "
          f"speed-up x{ref_seconds / ours:.1f}; same nearest TARs: {ref_tars}")


def test_bench_sklearn_roc_curve(benchmark, pairs, sklearn_result):
    from sklearn.metrics import roc_curve

    scores, labels = pairs
    fpr, tpr, _ = benchmark.pedantic(roc_curve, args=(labels, scores), rounds=1, iterations=1)
    assert nearest_tars(fpr, tpr) == sklearn_result[0]
    print(f"\n[metrics] sklearn roc_curve alone: {benchmark.stats.stats.min:.2f} s")


def test_bench_torchmetrics_binary_roc(benchmark, pairs, sklearn_result):
    """The torchmetrics route (exact thresholds, no sigmoid), for the record: chunked updates."""
    from torchmetrics.classification import BinaryROC

    scores, labels = pairs
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)

    def run():
        metric = BinaryROC(thresholds=None, normalization=None)
        for a, b in zip(torch.split(s, 1 << 20), torch.split(y, 1 << 20)):
            metric.update(a, b)
        return metric.compute()

    fpr, tpr, _ = benchmark.pedantic(run, rounds=1, iterations=1)
    # no collinear-point dropping and float32 rates: close to, not equal to, the published numbers
    approx = {far_key(f): float(tpr[int(torch.argmin((fpr.double() - f).abs()))]) for f in FARS}
    for key, value in sklearn_result[0].items():
        assert abs(approx[key] - value) < 2e-3
    print(f"\n[metrics] torchmetrics BinaryROC(thresholds=None, normalization=None): "
          f"{benchmark.stats.stats.min:.2f} s; its nearest TARs {approx}")


_MEMORY_PROBE = """
import json, sys, threading, time
import numpy as np
s = np.load(sys.argv[1]); y = np.load(sys.argv[2])
import torch
from sklearn.metrics import roc_curve
from eval_protocols.metrics import verification_report

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

peak, done = [rss_mib()], []
def sample():
    while not done:
        peak.append(rss_mib()); time.sleep(0.005)
before = rss_mib()
thread = threading.Thread(target=sample); thread.start()
if sys.argv[3] == "ours":
    verification_report(torch.from_numpy(s), torch.from_numpy(y))
else:
    roc_curve(y, s)
done.append(1); thread.join()
print(json.dumps({"before_mib": before, "peak_mib": max(peak)}))
"""


def test_bench_peak_memory(benchmark, pairs, tmp_path_factory):
    """Resident memory (sampled every 5 ms) of fresh processes that load the scores and run ours,
    then sklearn: the increase during the call is what the metric itself costs."""
    folder = tmp_path_factory.mktemp("scores")
    np.save(folder / "s.npy", pairs[0])
    np.save(folder / "y.npy", pairs[1])

    def probe(which: str) -> dict:
        cmd = [sys.executable, "-c", _MEMORY_PROBE, str(folder / "s.npy"), str(folder / "y.npy"), which]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    mem = benchmark.pedantic(lambda: {"ours": probe("ours"), "sklearn": probe("sklearn")}, rounds=1, iterations=1)
    benchmark.extra_info.update(mem)
    for name, m in mem.items():
        print(f"\n[metrics] RSS {name}: {m['before_mib']:.0f} MiB with the scores loaded (torch, sklearn "
              f"imported), peak {m['peak_mib']:.0f} MiB during the call (+{m['peak_mib'] - m['before_mib']:.0f} MiB)")
    assert mem["ours"]["peak_mib"] < 6 * 1024
