"""evaluate(): descriptors, scores and metrics against independent references (loops, sklearn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

import facecoreset_plugin as fp
from eval_protocols.runner import aggregate_templates, evaluate, evaluate_detailed
from eval_protocols.synthetic import SyntheticProtocol


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return SyntheticProtocol(preset="tiny").load(tmp_path_factory.mktemp("r"), progress=False)


def test_descriptors_match_a_per_template_loop(data):
    t = data.templates
    got = aggregate_templates(fp.load("quality_weighted"), t, progress=False, chunks=7)
    for s in range(0, t.num_sets, 17):
        a, b = int(t.offsets[s]), int(t.offsets[s + 1])
        v = sum(t.features[i] * t.norms[i] for i in range(a, b))
        torch.testing.assert_close(got[s], v / v.norm(), rtol=0, atol=1e-5)


def test_results_match_sklearn_and_loops(data):
    out = evaluate_detailed(data, {"mean": fp.load("mean")}, progress=False)
    res = out.results["mean"]
    t = data.templates
    desc = torch.stack([t.features[int(t.offsets[s]):int(t.offsets[s + 1])].mean(0) for s in range(t.num_sets)])
    desc = desc / desc.norm(dim=1, keepdim=True)
    scores = np.array([float(desc[a] @ desc[b]) for a, b in zip(data.pair_left.tolist(), data.pair_right.tolist())])
    np.testing.assert_allclose(out.scores["mean"], scores, atol=1e-5)
    fpr, tpr, _ = roc_curve(data.labels.numpy(), out.scores["mean"])
    for key, tar in res["verification"]["tar_at_far"]["nearest"].items():
        d = np.abs(fpr - float(key))
        assert tar == pytest.approx(tpr[d == d.min()].max())
    # 1:N rank-1 on G1 by a plain loop over probes
    g = data.galleries["G1"]
    gal_subjects = g.subjects.tolist()
    hits = mated = 0
    for pos, subj in zip(data.probes.positions.tolist(), data.probes.subjects.tolist()):
        if subj not in gal_subjects:
            continue
        mated += 1
        sims = [float(desc[pos] @ desc[q]) for q in g.positions.tolist()]
        hits += gal_subjects[int(np.argmax(sims))] == subj
    ident = res["identification"]
    assert ident["G1"]["num_mated"] == mated and ident["G1"]["rank1"] == pytest.approx(hits / mated)
    assert ident["mean"]["rank1"] == pytest.approx((ident["G1"]["rank1"] + ident["G2"]["rank1"]) / 2)
    assert set(res["timings"]) >= {"aggregate_s", "score_s", "verification_s", "identification_s", "total_s"}
    assert "roc" not in res["verification"] and "cmc" not in ident["G1"]
    assert out.curves["mean"]["roc"]["fpr"] and out.curves["mean"]["G2"]["cmc"]


def test_evaluate_returns_the_results_part_only(data):
    res = evaluate(data, {"a": fp.load("mean"), "b": fp.load("media_fusion")}, fars=(1e-3, 0.1), progress=False)
    assert list(res) == ["a", "b"]
    assert list(res["b"]["verification"]["tar_at_far"]["strict"]) == ["0.001", "0.1"]
    assert res["a"]["verification"]["num_genuine"] == int(data.labels.sum())


def test_bad_rows_refused_once_before_aggregating(data):
    from eval_protocols.runner import check_templates
    from facecoreset_plugin.errors import InputError

    t = data.templates
    bad = type(t)(t.features.clone(), t.norms.clone(), t.offsets, t.media, t.faceness, t.set_ids)
    bad.features[5, 3] = float("nan")
    bad.norms[9] = float("inf")
    with pytest.raises(InputError, match=r"flat rows \[5, 9\].*check the feature file"):
        check_templates(bad)
    agg = fp.load("mean")
    evaluate(data, {"m": agg}, fars=(0.1,), progress=False)
    assert agg.validate_args  # restored after the run
