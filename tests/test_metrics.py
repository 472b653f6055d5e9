"""eval_protocols.metrics against sklearn's roc_curve and plain-Python TAR@FAR selection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torchmetrics.classification import BinaryROC

from eval_protocols.metrics import FARS, TARatFAR, exact_roc, far_key, tar_at_far, verification_report
from facecoreset_plugin.errors import InputError

# ----------------------------------------------------------------------------- references


def ref_nearest(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """Published rule, loop form: nearest FPR on sklearn's curve, ties to the later point."""
    best_i, best_d = 0, math.inf
    for i, f in enumerate(fpr):
        d = abs(float(f) - far)
        if d <= best_d:
            best_i, best_d = i, d
    return float(tpr[best_i])


def ref_strict(scores: np.ndarray, labels: np.ndarray, far: float) -> tuple[float, int, float]:
    """Largest TPR over all thresholds (accept score >= t) with FPR <= far, by brute force."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    best = (0.0, 0, math.inf)
    for t in sorted(set(scores.tolist()), reverse=True):
        accepted = scores >= t
        fa = int((accepted & (labels == 0)).sum())
        if fa / n_neg <= far:
            tar = int((accepted & (labels == 1)).sum()) / n_pos
            if tar > best[0] or (tar == best[0] and fa < best[1]):
                best = (tar, fa, t)
    return best


def random_case(seed: int, n: int | None = None, decimals: int | None = None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(2, 400))
    labels = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(np.int64)
    labels[0], labels[1] = 1, 0
    scores = rng.normal(0, 1, n) + 1.5 * labels * rng.random()
    scores = scores * rng.uniform(0.1, 20) - rng.uniform(-5, 5)  # far outside [0, 1], negatives
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties, some mixed genuine/impostor
    return scores.astype(dtype), labels


# ----------------------------------------------------------------------------- exact ROC


@pytest.mark.parametrize("drop", [True, False])
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_exact_roc_equals_sklearn(seed, decimals, drop):
    scores, labels = random_case(seed, decimals=decimals, dtype=np.float64 if seed % 2 else np.float32)
    want = roc_curve(labels, scores, drop_intermediate=drop)
    got = exact_roc(torch.from_numpy(scores), torch.from_numpy(labels), drop_intermediate=drop)
    for w, g in zip(want, got):
        assert g.dtype == torch.float64
        np.testing.assert_array_equal(g.numpy(), w)


def test_exact_roc_large_float32_with_ties_equals_sklearn():
    rng = np.random.default_rng(7)
    n = 200_000
    labels = (rng.random(n) < 0.01).astype(np.int8)
    scores = (rng.normal(0, 0.1, n) + 0.5 * labels).astype(np.float16).astype(np.float32)  # heavy ties
    for drop in (True, False):
        want = roc_curve(labels, scores, drop_intermediate=drop)
        got = exact_roc(torch.from_numpy(scores), torch.from_numpy(labels), drop_intermediate=drop)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g.numpy(), w)


@pytest.mark.parametrize(
    "scores,labels",
    [
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 1]),  # all equal
        ([3.0, 1.0, 2.0, -1.0, 0.0], [1, 0, 0, 0, 0]),  # a single genuine
        ([3.0, 1.0, 2.0, -1.0, 0.0], [1, 1, 1, 0, 1]),  # a single impostor
        ([-7.0, -7.0, 9.0, 9.0, -7.0], [0, 1, 0, 1, 1]),  # mixed ties only
        ([1.0, 0.0], [0, 1]),  # inverted
        ([0.0, -0.0, 0.0, 1.0], [1, 0, 0, 1]),  # signed zeros tie
    ],
)
def test_exact_roc_adversarial_equals_sklearn(scores, labels):
    s = np.asarray(scores, dtype=np.float32)
    y = np.asarray(labels)
    for drop in (True, False):
        want = roc_curve(y, s, drop_intermediate=drop)
        got = exact_roc(torch.from_numpy(s), torch.from_numpy(y), drop_intermediate=drop)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g.numpy(), w)


def test_exact_roc_matches_torchmetrics_binary_roc_counts():
    scores, labels = random_case(3, n=5000, decimals=2)
    metric = BinaryROC(thresholds=None, normalization=None)  # exact, no implicit sigmoid
    for part in np.array_split(np.arange(scores.size), 4):
        metric.update(torch.from_numpy(scores[part]), torch.from_numpy(labels[part]))
    tm_fpr, tm_tpr, tm_thr = metric.compute()
    fpr, tpr, thr = exact_roc(torch.from_numpy(scores), torch.from_numpy(labels), drop_intermediate=False)
    # torchmetrics starts at threshold 1.0 instead of inf and divides in float32
    np.testing.assert_array_equal(thr[1:].numpy(), tm_thr[1:].double().numpy())
    np.testing.assert_allclose(fpr.numpy(), tm_fpr.double().numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(tpr.numpy(), tm_tpr.double().numpy(), rtol=1e-6, atol=0)


def test_bool_half_and_2d_inputs():
    scores, labels = random_case(5, n=300, decimals=1)
    want = roc_curve(labels, scores.astype(np.float16).astype(np.float32))
    got = exact_roc(torch.from_numpy(scores).half().reshape(30, 10), torch.from_numpy(labels).bool().reshape(30, 10))
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g.numpy(), w)


# ----------------------------------------------------------------------------- TAR@FAR rules

FAR_GRID = (1e-6, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.9, 1.0)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("decimals", [None, 1])
def test_tar_at_far_against_loop_references(seed, decimals):
    scores, labels = random_case(100 + seed, decimals=decimals)
    fpr, tpr, _ = roc_curve(labels, scores)
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    nearest = tar_at_far(s, y, FAR_GRID, rule="nearest")
    strict = tar_at_far(s, y, FAR_GRID, rule="strict")
    report = verification_report(s, y, FAR_GRID)
    for far in FAR_GRID:
        key = far_key(far)
        assert nearest[key] == ref_nearest(fpr, tpr, far)
        tar, false_accepts, threshold = ref_strict(scores, labels, far)
        assert strict[key] == tar
        assert report["strict"][key]["false_accepts"] == false_accepts
        assert report["strict"][key]["threshold"] == threshold
        assert report["strict"][key]["fpr"] == false_accepts / (labels == 0).sum()
        assert report["strict"][key]["fpr"] <= far
    assert report["tar_at_far"] == {"nearest": nearest, "strict": strict}


def test_hand_computed_example():
    # thresholds: 0.9 g, 0.8 i, 0.7 g, 0.6 i, 0.5 i, 0.4 g, 0.3 i  (3 genuine, 4 impostor)
    s = torch.tensor([0.6, 0.9, 0.3, 0.8, 0.4, 0.7, 0.5])
    y = torch.tensor([0, 1, 0, 0, 1, 1, 0])
    fpr, tpr, thr = exact_roc(s, y)
    # the point (fps 2, tps 2) at 0.6 is collinear on a horizontal run and dropped
    assert fpr.tolist() == [0, 0, 0.25, 0.25, 0.75, 0.75, 1]
    assert tpr.tolist() == [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1]
    assert thr.tolist()[1:] == pytest.approx([0.9, 0.8, 0.7, 0.5, 0.4, 0.3])
    assert thr[0] == math.inf
    rep = verification_report(s, y, fars=(0.5, 0.2))
    # FAR 0.5: fpr 0.25 and 0.75 are both 0.25 away; the tie goes to the later, higher point
    assert rep["nearest"]["0.5"]["tar"] == 1.0 and rep["nearest"]["0.5"]["fpr"] == 0.75
    # strict 0.5: TPR 2/3 is reached at 0.7 (1 false accept) and kept down to 0.6 (2): report 0.7
    assert rep["strict"]["0.5"] == pytest.approx({"tar": 2 / 3, "fpr": 0.25, "false_accepts": 1, "threshold": 0.7})
    assert rep["nearest"]["0.2"]["tar"] == 2 / 3  # fpr 0.25 is nearest
    assert rep["strict"]["0.2"]["tar"] == 1 / 3 and rep["strict"]["0.2"]["false_accepts"] == 0
    assert rep["num_genuine"] == 3 and rep["num_impostor"] == 4


def test_nearest_uses_sklearn_dropped_curve_not_full_curve():
    # three (genuine, impostor) tied pairs: a diagonal collinear run whose middle point is dropped
    s = torch.tensor([0.9, 0.9, 0.8, 0.8, 0.7, 0.7])
    y = torch.tensor([1, 0, 1, 0, 1, 0])
    assert tar_at_far(s, y, (0.6,), "nearest") == {"0.6": 1 / 3}  # (1/3, 1/3) is nearest kept point
    assert tar_at_far(s, y, (0.7,), "strict") == {"0.7": 2 / 3}  # (2/3, 2/3) exists at threshold 0.8


def test_far_below_one_impostor():
    scores, labels = random_case(11, n=300)
    n_neg = int((labels == 0).sum())
    far = 0.1 / n_neg
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    fpr, tpr, _ = roc_curve(labels, scores)
    rep = verification_report(s, y, (far,))
    assert rep["strict"][far_key(far)]["false_accepts"] == 0
    assert rep["strict"][far_key(far)]["tar"] == ref_strict(scores, labels, far)[0]
    assert rep["nearest"][far_key(far)]["tar"] == ref_nearest(fpr, tpr, far)


def test_scores_are_used_as_given_no_sigmoid():
    # torchmetrics' default squashes a batch through a sigmoid when that batch leaves [0, 1]:
    # chunk 0 lies inside [0, 1], chunk 1 does not, so that would reorder scores across chunks
    scores, labels = random_case(21, n=2000)
    unit = (scores - scores.min()) / (scores.max() - scores.min())
    raw = np.concatenate([unit[:1000], unit[1000:] * 3.0 - 1.0])
    s, y = torch.from_numpy(raw), torch.from_numpy(labels)
    metric = TARatFAR(fars=FAR_GRID)
    metric.update(s[:1000], y[:1000])
    metric.update(s[1000:], y[1000:])
    got = metric.compute()["tar_at_far"]["nearest"]
    fpr, tpr, _ = roc_curve(labels, raw)
    assert got == {far_key(f): ref_nearest(fpr, tpr, f) for f in FAR_GRID}
    # a monotone rescale of all scores moves nothing
    assert verification_report(s * 8.0 - 3.0, y)["tar_at_far"] == verification_report(s, y)["tar_at_far"]


def test_auc_and_eer_against_sklearn():
    from scipy.optimize import brentq

    scores, labels = random_case(31, n=3000, decimals=1)
    rep = verification_report(torch.from_numpy(scores), torch.from_numpy(labels))
    assert rep["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    eer = brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0, xtol=1e-14)
    assert rep["eer"] == pytest.approx(eer, abs=1e-9)


def test_report_is_json_ready_and_has_plot_curve():
    scores, labels = random_case(41, n=5000)
    rep = verification_report(torch.from_numpy(scores), torch.from_numpy(labels))
    text = json.dumps(rep)
    assert set(rep["tar_at_far"]["nearest"]) == {far_key(f) for f in FARS}
    assert far_key(1e-6) == "1e-06" and far_key(0.1) == "0.1"
    roc = rep["roc"]
    assert 2 <= len(roc["fpr"]) == len(roc["tpr"]) <= 4100
    assert roc["fpr"] == sorted(roc["fpr"]) and roc["fpr"][-1] == 1.0
    fpr, tpr, _ = roc_curve(labels, scores)
    pairs = set(zip(fpr.tolist(), tpr.tolist()))
    assert all(p in pairs for p in zip(roc["fpr"], roc["tpr"]))  # real curve points only
    assert "NaN" not in text


# ----------------------------------------------------------------------------- Metric shell


def test_metric_chunked_equals_one_shot():
    scores, labels = random_case(51, n=6000, decimals=2)
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    metric = TARatFAR(fars=(1e-3, 1e-2, 0.1))
    for part in torch.split(torch.randperm(s.numel(), generator=torch.Generator().manual_seed(0)), 777):
        metric.update(s[part], y[part])
    assert metric.compute() == verification_report(s, y, (1e-3, 1e-2, 0.1))
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(InputError, match="before any update"):
        metric.compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_cpu_numbers():
    scores, labels = random_case(61, n=5000, decimals=2)
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    metric = TARatFAR().to("cuda")
    metric.update(s.cuda(), y.cuda())
    assert metric.compute() == verification_report(s, y)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "scores,labels,match",
    [
        ([0.1, float("nan"), 0.3], [1, 0, 0], "non-finite score.*index 1"),
        ([0.1, float("inf"), 0.3], [1, 0, 0], "non-finite"),
        ([0.1, 0.2, 0.3], [1, 2, 0], "label at index 1 is 2"),
        ([0.1, 0.2, 0.3], [1, 0], "3 scores but 2 labels"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "0 genuine and 3 impostor"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "3 genuine and 0 impostor"),
    ],
)
def test_bad_input_raises_clear_error(scores, labels, match):
    with pytest.raises(InputError, match=match):
        verification_report(torch.tensor(scores), torch.tensor(labels))


def test_bad_rule_and_far():
    s, y = torch.tensor([0.1, 0.2]), torch.tensor([0, 1])
    with pytest.raises(InputError, match="valid rules are nearest, strict"):
        tar_at_far(s, y, rule="closest")
    with pytest.raises(InputError, match="outside"):
        tar_at_far(s, y, fars=(0.0,))
    with pytest.raises(InputError, match="torch tensors"):
        exact_roc(np.array([0.1, 0.2]), y)


# ----------------------------------------------------------------------------- import cost


def test_import_is_light_and_metric_pickles():
    import pickle
    import subprocess
    import sys

    code = ("import sys, eval_protocols.metrics; "
            "print(sorted(m for m in ('torchmetrics', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # the Metric class (and torchmetrics) load on first use only
    metric = TARatFAR(fars=(0.5,))
    metric.update(torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0, 1, 1]))
    assert pickle.loads(pickle.dumps(metric)).compute() == metric.compute()
