"""1:1 verification metrics: exact ROC, TAR@FAR (``nearest`` and ``strict`` rules), AUC, EER.

Functional core (pure tensor functions) plus one torchmetrics ``Metric`` shell, :class:`TARatFAR`.

The exact curve equals ``sklearn.metrics.roc_curve(labels, scores)`` point for point (its default
``drop_intermediate=True`` included): the same torchmetrics ``BinaryROC(thresholds=None)``
semantics (one threshold per distinct score, counts accumulated from the top score down), but
built from one values-only sort plus a bincount of the genuine scores, with int64 counts and
float64 rates. Scores are used as given: no sigmoid, any real range.

Rules at a target FAR ``f``:

* ``nearest`` (published IJB tables): on the sklearn curve, the point whose FPR is nearest ``f``
  (it may lie above ``f``); ties go to the later point, i.e. the largest TPR.
* ``strict``: the largest TPR over all thresholds whose FPR is at or below ``f``; the achieved
  FPR, false-accept count and threshold (accept when ``score >= threshold``) come with it, taken
  at the highest threshold that reaches that TPR (fewest false accepts).
"""

from __future__ import annotations

__all__ = [
    "FARS",
    "RULES",
    "far_key",
    "exact_roc",
    "tar_at_far",
    "verification_report",
    "TARatFAR",
]

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from facecoreset_plugin.errors import InputError

FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
RULES: tuple[str, ...] = ("nearest", "strict")

_ROC_PLOT_POINTS = 2000  # log-spaced FPR grid size of the downsampled curve in reports


def far_key(far: float) -> str:
    """JSON/report key of a FAR (or FPIR): ``format(far, "g")``, e.g. ``"1e-06"``, ``"0.1"``."""
    return format(far, "g")


# ----------------------------------------------------------------------------- validation


def _check_inputs(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate one batch of scores/labels and return them flat (scores float, labels bool).

    Raises:
        InputError: shapes differ, a score is NaN/inf, or a label is not 0/1.
    """
    if not isinstance(scores, Tensor) or not isinstance(labels, Tensor):
        raise InputError(
            f"verification metrics take torch tensors, got scores={type(scores).__name__}, "
            f"labels={type(labels).__name__}; wrap arrays with torch.as_tensor(...)"
        )
    scores = scores.detach().flatten()
    labels = labels.detach().flatten()
    if scores.numel() != labels.numel():
        raise InputError(
            f"verification metrics: {scores.numel()} scores but {labels.numel()} labels; "
            "give one label (1 genuine, 0 impostor) per score"
        )
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    elif scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact widening: ties are preserved
    if scores.numel():
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise InputError(
                f"verification metrics: {int(bad.sum())} non-finite score(s), first at index {i} "
                f"(value {scores[i].item()}); remove NaN/inf scores (they come from zero or NaN "
                "descriptors) before computing TAR@FAR"
            )
    if labels.dtype != torch.bool:
        ok = (labels == 0) | (labels == 1)
        if labels.numel() and not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            raise InputError(
                f"verification metrics: label at index {i} is {labels[i].item()!r}; labels must "
                "be 1 (genuine pair) or 0 (impostor pair)"
            )
        labels = labels == 1
    return scores, labels


def _check_both_classes(num_genuine: int, num_impostor: int) -> None:
    if num_genuine == 0 or num_impostor == 0:
        raise InputError(
            f"verification metrics need genuine and impostor pairs, got {num_genuine} genuine "
            f"and {num_impostor} impostor; check the pair list's label column (1 genuine, 0 impostor)"
        )


def _check_fars(fars: Sequence[float]) -> tuple[float, ...]:
    fars = tuple(float(f) for f in fars)
    for f in fars:
        if not 0.0 < f <= 1.0:
            raise InputError(f"target FAR {f!r} is outside (0, 1]; use values such as 1e-4 or 0.01")
    return fars


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise InputError(f"unknown FAR rule {rule!r}; valid rules are {', '.join(RULES)}")


# ----------------------------------------------------------------------------- functional core
#
# The curve is computed on the CPU with numpy whatever the scores' device: the work is one sort
# plus a few linear passes (numpy's SIMD sort and huge-page arrays beat torch's CPU kernels several
# times here), and moving 16M float32 scores off a GPU costs a few milliseconds.


def _to_numpy(scores: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return scores.cpu().numpy(), labels.cpu().numpy()


def _clf_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False/true accept counts at every distinct score, highest score first.

    Args:
        scores: [N] finite floats.
        labels: [N] bool, True for genuine.

    Returns:
        fps, tps: [M] int64 counts of impostor/genuine scores ``>=`` each threshold;
        thresholds: [M] the distinct scores, descending (a view, in the scores' dtype).
    """
    n = scores.size
    asc = np.sort(scores)  # values only: much cheaper than an argsort
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    np.not_equal(asc[1:], asc[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)  # first index of every run of equal values
    del new_run
    distinct = asc[starts]
    del asc
    slot = np.searchsorted(distinct, scores[labels])  # exact: each genuine score is a distinct value
    per_value = np.bincount(slot, minlength=distinct.size)
    tps = np.cumsum(per_value[::-1])
    fps = (n - starts[::-1]) - tps
    return fps, tps, distinct[::-1]


def _keep_corners(fps: np.ndarray, tps: np.ndarray) -> np.ndarray:
    """sklearn's ``drop_intermediate``: keep the ends and every point where the curve bends."""
    keep = np.ones(fps.size, dtype=bool)
    if fps.size > 2:  # a non-zero second difference of fps or tps, from one first difference each
        step = np.diff(fps)
        np.not_equal(step[1:], step[:-1], out=keep[1:-1])
        step = np.diff(tps)
        keep[1:-1] |= step[1:] != step[:-1]
    return keep


def _finish_curve(
    fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Prepend the (0, 0, inf) point; return fpr, tpr (float64), thresholds and the fps counts."""
    fps = np.concatenate([[0], fps])
    tps = np.concatenate([[0], tps])
    thresholds = np.concatenate([[np.inf], thresholds.astype(np.float64)])
    return fps / float(fps[-1]), tps / float(tps[-1]), thresholds, fps


def exact_roc(scores: Tensor, labels: Tensor, drop_intermediate: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ROC curve, identical to ``sklearn.metrics.roc_curve(labels, scores)``.

    Args:
        scores: [N] similarity scores (any finite real values; no sigmoid is applied).
        labels: [N] 1/True for genuine pairs, 0/False for impostor pairs.
        drop_intermediate: drop collinear points exactly as sklearn's default does.

    Returns:
        fpr, tpr, thresholds: float64 CPU tensors starting with the point (0, 0, inf); a pair
        is accepted at threshold t when ``score >= t``.

    Raises:
        InputError: bad shapes/values, or only one class present.
    """
    s, y = _to_numpy(*_check_inputs(scores, labels))
    num_genuine = int(np.count_nonzero(y))
    _check_both_classes(num_genuine, y.size - num_genuine)
    fps, tps, thr = _clf_counts(s, y)
    if drop_intermediate:
        keep = _keep_corners(fps, tps)
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fpr, tpr, thr, _ = _finish_curve(fps, tps, thr)
    return torch.from_numpy(fpr), torch.from_numpy(tpr), torch.from_numpy(thr)


def _nearest_index(fpr: np.ndarray, far: float) -> int:
    """Index of the point whose FPR is nearest ``far``; ties go to the last such point."""
    dist = np.abs(fpr - far)
    return int(np.flatnonzero(dist == dist.min())[-1])


def _max_false_accepts(far: float, num_impostor: int) -> int:
    """Largest count ``fa`` with ``fa / num_impostor <= far`` in float64, as the FPR is reported."""
    fa = min(math.floor(far * num_impostor), num_impostor)
    while fa < num_impostor and (fa + 1) / num_impostor <= far:
        fa += 1
    while fa > 0 and fa / num_impostor > far:
        fa -= 1
    return fa


class _Curves:
    """The sklearn curve (rates) and the full curve (counts only) of one score set, from one sort."""

    def __init__(self, scores: Tensor, labels: Tensor) -> None:
        s, y = _to_numpy(scores, labels)
        self.num_genuine = int(np.count_nonzero(y))
        self.num_impostor = y.size - self.num_genuine
        _check_both_classes(self.num_genuine, self.num_impostor)
        self.full_fps, self.full_tps, self.full_thr = _clf_counts(s, y)  # without the (0, 0, inf) point
        keep = _keep_corners(self.full_fps, self.full_tps)
        self.fpr, self.tpr, self.thr, _ = _finish_curve(self.full_fps[keep], self.full_tps[keep], self.full_thr[keep])

    def nearest(self, far: float) -> dict[str, float]:
        i = _nearest_index(self.fpr, far)
        return {"tar": float(self.tpr[i]), "fpr": float(self.fpr[i]), "threshold": float(self.thr[i])}

    def strict(self, far: float) -> dict[str, Any]:
        # points with FPR <= far: the first k of the curve (fps never decreases)
        k = int(np.searchsorted(self.full_fps, _max_false_accepts(far, self.num_impostor), side="right"))
        genuine = int(self.full_tps[k - 1]) if k else 0
        if genuine == 0:  # nothing to gain: accept nothing
            return {"tar": 0.0, "fpr": 0.0, "false_accepts": 0, "threshold": math.inf}
        # of the thresholds reaching that TPR, report the highest one (fewest false accepts)
        i = int(np.searchsorted(self.full_tps, genuine, side="left"))
        false_accepts = int(self.full_fps[i])
        return {
            "tar": genuine / self.num_genuine,
            "fpr": false_accepts / self.num_impostor,
            "false_accepts": false_accepts,
            "threshold": float(self.full_thr[i]),
        }

    def auc(self) -> float:
        return float(np.trapezoid(self.tpr, self.fpr))

    def eer(self) -> float:
        """Equal error rate where FPR meets FNR = 1 - TPR, linear between curve points."""
        gap = (1.0 - self.tpr) - self.fpr  # +1 at (0, 0), -1 at (1, 1), non-increasing
        j = int(np.flatnonzero(gap <= 0)[0])
        if gap[j] == 0:
            return float(self.fpr[j])
        g0, g1 = float(gap[j - 1]), float(gap[j])
        f0, f1 = float(self.fpr[j - 1]), float(self.fpr[j])
        return f0 + g0 / (g0 - g1) * (f1 - f0)

    def plot_curve(self, points: int = _ROC_PLOT_POINTS) -> dict[str, list[float]]:
        """Curve points around a log-spaced FPR grid (plus the last point), for plots."""
        low = math.log10(min(1.0, 0.1 / self.num_impostor))
        grid = np.logspace(low, 0.0, points)
        idx = np.searchsorted(self.fpr, grid, side="right") - 1
        idx = np.unique(np.concatenate([idx, idx + 1, [1, self.fpr.size - 1]]))
        idx = idx[(idx >= 1) & (idx < self.fpr.size)]
        return {"fpr": self.fpr[idx].tolist(), "tpr": self.tpr[idx].tolist()}


def tar_at_far(
    scores: Tensor, labels: Tensor, fars: Sequence[float] = FARS, rule: str = "nearest"
) -> dict[str, float]:
    """TAR at each target FAR.

    Args:
        scores: [N] similarity scores.
        labels: [N] 1 genuine / 0 impostor.
        fars: target false accept rates.
        rule: ``"nearest"`` (published tables: sklearn curve, nearest FPR, ties to the largest
            TPR) or ``"strict"`` (largest TPR with FPR <= target).

    Returns:
        ``{far_key(far): tar}`` with TAR as a fraction.
    """
    _check_rule(rule)
    fars = _check_fars(fars)
    curves = _Curves(*_check_inputs(scores, labels))
    pick = curves.nearest if rule == "nearest" else curves.strict
    return {far_key(f): pick(f)["tar"] for f in fars}


def verification_report(scores: Tensor, labels: Tensor, fars: Sequence[float] = FARS) -> dict:
    """Everything a 1:1 result table and ROC plot need, as plain JSON-ready Python values.

    Returns:
        ``{"tar_at_far": {"nearest": {key: tar}, "strict": {key: tar}},
        "nearest": {key: {"tar", "fpr", "threshold"}},
        "strict": {key: {"tar", "fpr", "false_accepts", "threshold"}},
        "auc", "eer", "num_genuine", "num_impostor", "roc": {"fpr": [...], "tpr": [...]}}``.
        A threshold is ``inf`` at the accept-nothing point (sklearn's leading threshold).
    """
    fars = _check_fars(fars)
    curves = _Curves(*_check_inputs(scores, labels))
    nearest = {far_key(f): curves.nearest(f) for f in fars}
    strict = {far_key(f): curves.strict(f) for f in fars}
    return {
        "tar_at_far": {
            "nearest": {k: v["tar"] for k, v in nearest.items()},
            "strict": {k: v["tar"] for k, v in strict.items()},
        },
        "nearest": nearest,
        "strict": strict,
        "auc": curves.auc(),
        "eer": curves.eer(),
        "num_genuine": curves.num_genuine,
        "num_impostor": curves.num_impostor,
        "roc": curves.plot_curve(),
    }


# ----------------------------------------------------------------------------- Metric shell
#
# Importing torchmetrics also imports matplotlib and takes seconds, so the ``Metric`` class is
# built on first access (``from eval_protocols.metrics import TARatFAR``), not at import time.


def _build_taratfar() -> type:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat

    class TARatFAR(Metric):
        """TAR@FAR as a torchmetrics ``Metric``: ``update(scores, labels)`` per chunk of pairs,
        ``compute()`` returns :func:`verification_report` of everything seen (exact, no binning).

        Args:
            fars: target false accept rates.
            validate_args: check every batch (shapes, finite scores, 0/1 labels).
            **kwargs: passed to ``torchmetrics.Metric``.
        """

        is_differentiable = False
        higher_is_better = True
        full_state_update = False

        def __init__(self, fars: Sequence[float] = FARS, validate_args: bool = True, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.fars = _check_fars(fars)
            self.validate_args = validate_args
            self.add_state("scores", default=[], dist_reduce_fx="cat")
            self.add_state("labels", default=[], dist_reduce_fx="cat")

        def update(self, scores: Tensor, labels: Tensor) -> None:  # type: ignore[override]
            """Add one chunk of pair scores and their 0/1 labels."""
            if self.validate_args:
                scores, labels = _check_inputs(scores, labels)
            else:
                scores, labels = scores.detach().flatten(), labels.detach().flatten() == 1
            self.scores.append(scores)
            self.labels.append(labels)

        def compute(self) -> dict:  # type: ignore[override]
            """The :func:`verification_report` of all scores seen since the last reset."""
            if not self.scores:
                raise InputError("TARatFAR.compute() called before any update(scores, labels)")
            scores = dim_zero_cat(self.scores)
            labels = dim_zero_cat(self.labels)
            return verification_report(scores, labels.bool(), self.fars)

    TARatFAR.__module__, TARatFAR.__qualname__ = __name__, "TARatFAR"
    return TARatFAR


def __getattr__(name: str) -> Any:
    if name == "TARatFAR":
        cls = _build_taratfar()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
