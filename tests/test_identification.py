"""eval_protocols.identification against a plain Python search loop."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch

from eval_protocols.identification import (
    OpenSetIdentification,
    mean_over_galleries,
    open_set_identification,
    probe_statistics,
)
from facecoreset_plugin.errors import InputError

RANKS = (1, 2, 5, 10)
FPIRS = (0.01, 0.05, 0.1, 0.29, 0.5, 1.0)


def reference(probe_desc, probe_subjects, gallery_desc, gallery_subjects, ranks=RANKS, fpirs=FPIRS):
    """Open-set search, one probe and one gallery template at a time, in plain Python."""
    gal = [[float(v) for v in row] for row in gallery_desc.double()]
    gal_subj = [int(s) for s in gallery_subjects]
    mate_ranks, mate_scores, nonmated = [], [], []
    for row, subj in zip(probe_desc.double(), probe_subjects.tolist()):
        p = [float(v) for v in row]
        best: dict[int, float] = {}
        for g, s in zip(gal, gal_subj):
            score = sum(a * b for a, b in zip(p, g))
            best[s] = max(best.get(s, -math.inf), score)
        if subj in best:
            mate = best[subj]
            mate_ranks.append(sum(1 for v in best.values() if v >= mate))
            mate_scores.append(mate)
        else:
            nonmated.append(max(best.values()))
    out = {}
    for k in ranks:
        out[f"rank{k}"] = sum(r <= k for r in mate_ranks) / len(mate_ranks) if mate_ranks else math.nan
    nonmated.sort(reverse=True)
    for f in fpirs:
        frac = Fraction(str(f))
        k = max(len(nonmated) * frac.numerator // frac.denominator, 1)
        if not nonmated:
            out[f"tpir@{f:g}"] = math.nan
            continue
        t = nonmated[k - 1]
        hits = sum(1 for r, s in zip(mate_ranks, mate_scores) if r == 1 and s > t)
        out[f"tpir@{f:g}"] = hits / len(mate_ranks) if mate_ranks else math.nan
        out[f"threshold@{f:g}"] = t
    out["num_mated"], out["num_nonmated"] = len(mate_ranks), len(nonmated)
    return out


def make_data(seed, num_subjects=25, extra_templates=6, num_probes=160, absent=12, dim=6, grid=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(1000, generator=g)[: num_subjects + absent] * 3 + 11  # sparse, unordered
    enrolled, others = ids[:num_subjects], ids[num_subjects:]
    gallery_subjects = torch.cat([enrolled, enrolled[torch.randint(0, num_subjects, (extra_templates,), generator=g)]])
    pool = torch.cat([enrolled, others])
    probe_subjects = pool[torch.randint(0, pool.numel(), (num_probes,), generator=g)]

    def desc(n):
        if grid:  # small integer grid: every dot product is exact, so ties really happen
            return torch.randint(-2, 3, (n, dim), generator=g).double() / 4
        return torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)

    # probes lean toward their subject's first gallery template so ranks are not all random
    gallery_desc = desc(gallery_subjects.numel())
    probe_desc = desc(num_probes)
    if not grid:
        first = {int(s): i for i, s in reversed(list(enumerate(gallery_subjects.tolist())))}
        for i, s in enumerate(probe_subjects.tolist()):
            if s in first:
                probe_desc[i] += 1.5 * gallery_desc[first[s]]
        probe_desc = torch.nn.functional.normalize(probe_desc, dim=1)
    return probe_desc, probe_subjects, gallery_desc, gallery_subjects


def check_against_reference(got, want, exact, tol=1e-12):
    assert got["num_mated"] == want["num_mated"] and got["num_nonmated"] == want["num_nonmated"]
    for k in RANKS:
        assert got[f"rank{k}"] == want[f"rank{k}"]
    for f in FPIRS:
        key = format(f, "g")
        assert got[f"tpir@{key}"] == want[f"tpir@{key}"]
        if exact:
            assert got["thresholds"][key] == want[f"threshold@{key}"]
        else:
            assert got["thresholds"][key] == pytest.approx(want[f"threshold@{key}"], abs=tol)


@pytest.mark.parametrize("seed", range(4))
def test_matches_loop_reference_continuous(seed):
    data = make_data(seed)
    got = open_set_identification(*data, ranks=RANKS, fpirs=FPIRS, chunk_size=37)
    check_against_reference(got, reference(*data), exact=False)
    assert got["rank1"] > 0.3  # the probes do lean toward their mates


@pytest.mark.parametrize("seed", range(4))
def test_matches_loop_reference_with_exact_ties(seed):
    data = make_data(100 + seed, grid=True)
    got = open_set_identification(*data, ranks=RANKS, fpirs=FPIRS, chunk_size=29)
    check_against_reference(got, reference(*data), exact=True)


def test_float32_and_one_template_per_subject():
    p, ps, g, gs = make_data(7, extra_templates=0)
    got = open_set_identification(p.float(), ps, g.float(), gs, ranks=RANKS, fpirs=FPIRS)
    check_against_reference(got, reference(p.float(), ps, g.float(), gs), exact=False, tol=1e-6)


def test_hand_example():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    gallery_subjects = torch.tensor([10, 20, 20])  # subject 20 owns two templates
    probes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, -0.8], [-1.0, 0.0]])
    probe_subjects = torch.tensor([10, 20, 20, 30, 40])  # 30 and 40 are not enrolled
    r = open_set_identification(probes, probe_subjects, gallery, gallery_subjects, ranks=(1, 2), fpirs=(0.5, 1.0))
    # mated: p0 -> 10 scores 1 vs 20's best 0.6 (rank 1); p1 -> 20 scores 1 (rank 1);
    # p2 -> 20's best is 0.96 vs 10's 0.8 (rank 1). Non-mated best scores: p3 0.6, p4 0.0
    assert (r["num_mated"], r["num_nonmated"]) == (3, 2)
    assert r["rank1"] == 1.0 and r["rank2"] == 1.0
    # FPIR 0.5: k = 1 -> t = 0.6; all mates score above it. FPIR 1.0: k = 2 -> t = 0.0
    assert r["thresholds"]["0.5"] == pytest.approx(0.6) and r["tpir@0.5"] == 1.0
    assert r["thresholds"]["1"] == 0.0 and r["tpir@1"] == 1.0


def test_mate_tied_with_another_subject_is_not_rank1():
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    r = open_set_identification(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 9]),
                                gallery, torch.tensor([1, 2]), ranks=(1, 2), fpirs=(0.5,))
    assert r["rank1"] == 0.0 and r["rank2"] == 1.0 and r["tpir@0.5"] == 0.0


def test_no_nonmated_probes():
    p, ps, g, gs = make_data(3, absent=0)
    with pytest.warns(UserWarning, match="no non-mated probe"):
        r = open_set_identification(p, ps, g, gs, ranks=RANKS, fpirs=FPIRS)
    want = reference(p, ps, g, gs)
    assert r["num_nonmated"] == 0 and r["num_mated"] == ps.numel()
    assert all(r[f"rank{k}"] == want[f"rank{k}"] for k in RANKS)
    assert all(math.isnan(r[f"tpir@{f:g}"]) for f in FPIRS)
    assert r["dir"] == {"fpir": [], "tpir": []}


def test_no_mated_probes():
    p, ps, g, gs = make_data(4)
    absent = ps + 1  # ids are 11 mod 3 = 2, so +1 is never enrolled
    with pytest.warns(UserWarning, match="no mated probe"):
        r = open_set_identification(p, absent, g, gs, ranks=RANKS, fpirs=FPIRS)
    assert r["num_mated"] == 0 and r["num_nonmated"] == ps.numel()
    assert math.isnan(r["rank1"]) and math.isnan(r["tpir@0.01"])


def test_cmc_and_dir_curves_agree_with_scalars():
    data = make_data(9, num_probes=400, absent=30)
    r = open_set_identification(*data, ranks=RANKS, fpirs=FPIRS)
    assert len(r["cmc"]) == 20
    assert all(r["cmc"][k - 1] == r[f"rank{k}"] for k in RANKS)
    assert r["cmc"] == sorted(r["cmc"])
    dir_points = dict(zip(r["dir"]["fpir"], r["dir"]["tpir"]))
    n = r["num_nonmated"]
    for f in FPIRS:
        frac = Fraction(str(f))
        k = max(n * frac.numerator // frac.denominator, 1)
        assert dir_points[k / n] == r[f"tpir@{f:g}"]
    json.dumps(r)


def test_metric_chunked_equals_functional_and_mean():
    p, ps, g, gs = make_data(5, num_probes=300)
    want = open_set_identification(p, ps, g, gs)
    metric = OpenSetIdentification(g, gs, chunk_size=16)
    for part in torch.split(torch.arange(ps.numel()), 70):
        metric.update(p[part], ps[part])
    assert metric.compute() == want
    p2, ps2, g2, gs2 = make_data(6, num_probes=300)
    other = open_set_identification(p2, ps2, g2, gs2)
    mean = mean_over_galleries({"G1": want, "G2": other})
    assert mean["rank1"] == (want["rank1"] + other["rank1"]) / 2
    assert mean["tpir@0.01"] == (want["tpir@0.01"] + other["tpir@0.01"]) / 2
    assert set(mean) == {"rank1", "rank5", "rank10", "tpir@0.01", "tpir@0.1"}


def test_probe_statistics_shapes():
    p, ps, g, gs = make_data(8)
    ranks, mate, nonmated = probe_statistics(p, ps, g, gs, chunk_size=5)
    assert ranks.dtype == torch.long and ranks.min() >= 1
    assert ranks.numel() == mate.numel() and ranks.numel() + nonmated.numel() == ps.numel()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    data = make_data(10)
    want = open_set_identification(*data)
    metric = OpenSetIdentification(data[2], data[3]).to("cuda")
    metric.update(data[0].cuda(), data[1].cuda())
    got = metric.compute()
    assert got["rank1"] == want["rank1"] and got["tpir@0.1"] == want["tpir@0.1"]


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda p, ps, g, gs: (p[:, :4], ps, g, gs), "dim 4 but gallery descriptors dim 6"),
        (lambda p, ps, g, gs: (p, ps[:-1], g, gs), "descriptor rows but .* subject ids"),
        (lambda p, ps, g, gs: (p, ps, g.index_fill(0, torch.tensor([2]), float("nan")), gs), "gallery: 1 descriptor row.*row 2"),
        (lambda p, ps, g, gs: (p, ps.double(), g, gs), "integer tensor"),
        (lambda p, ps, g, gs: (p, ps, g[:0], gs[:0]), "no templates"),
    ],
)
def test_bad_input(change, match):
    with pytest.raises(InputError, match=match):
        open_set_identification(*change(*make_data(0)))


def test_import_is_light_and_metric_pickles():
    import pickle
    import subprocess
    import sys

    code = ("import sys, eval_protocols.identification; "
            "print(sorted(m for m in ('torchmetrics', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # the Metric class (and torchmetrics) load on first use only
    p, ps, g, gs = make_data(12)
    metric = OpenSetIdentification(g, gs)
    metric.update(p, ps)
    assert pickle.loads(pickle.dumps(metric)).compute() == metric.compute()
    assert list(metric.state_dict()) == []  # the gallery is not written into checkpoints
