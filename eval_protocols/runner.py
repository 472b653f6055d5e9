"""Run aggregators over a protocol: template descriptors, 1:1 scores and metrics, 1:N per gallery.

:func:`evaluate` returns the ``results.json`` "aggregators" structure; :func:`evaluate_detailed`
also returns the raw scores and curves for plots and the ``scores.npz`` file.
"""

from __future__ import annotations

__all__ = ["EvaluationOutput", "aggregate_templates", "check_templates", "evaluate", "evaluate_detailed"]

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from facecoreset_plugin.aggregator import Aggregator
from facecoreset_plugin.batching import RaggedSets

from .identification import mean_over_galleries, open_set_identification
from .metrics import FARS, verification_report
from .protocol import ProtocolData
from .scoring import PairPlan

_CURVE_KEYS = ("roc",)
_ID_CURVE_KEYS = ("cmc", "dir")


@dataclass
class EvaluationOutput:
    """Results plus the raw material of the plots."""

    results: dict[str, Any]  # aggregator name -> metrics (the results.json "aggregators" part)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # aggregator name -> [P] float32 pair scores
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"roc": ..., "G1": {"cmc", "dir"}}


def _slice_sets(sets: RaggedSets, s0: int, s1: int) -> RaggedSets:
    r0, r1 = int(sets.offsets[s0]), int(sets.offsets[s1])
    pick = lambda t: None if t is None else t[r0:r1]  # noqa: E731
    return RaggedSets(sets.features[r0:r1], sets.norms[r0:r1], sets.offsets[s0:s1 + 1] - r0,
                      pick(sets.media), pick(sets.faceness))


@torch.inference_mode()
def aggregate_templates(aggregator: Aggregator, templates: RaggedSets, device: torch.device | str = "cpu",
                        progress: bool = True, desc: str = "aggregating", chunks: int = 16) -> Tensor:
    """Unit descriptors [T, D] (CPU float32) of every template, via ``aggregate_ragged``.

    Templates go through in ``chunks`` contiguous groups so a progress bar can follow.
    """
    from tqdm.auto import tqdm

    aggregator = aggregator.to(device).eval()
    total = int(templates.offsets[-1])
    if type(aggregator).aggregate_ragged is not Aggregator.aggregate_ragged:
        chunks = 1  # its own ragged path (segment operations): one call is fastest
    step = max(-(-total // chunks), 1 << 16)
    bounds = [0]
    while bounds[-1] < templates.num_sets:
        target = int(templates.offsets[bounds[-1]]) + step
        nxt = int(torch.searchsorted(templates.offsets, torch.tensor(target), right=True))
        bounds.append(min(max(nxt, bounds[-1] + 1), templates.num_sets))
    parts = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for s0, s1 in zip(bounds[:-1], bounds[1:]):
            sub = templates if (s0 == 0 and s1 == templates.num_sets) else _slice_sets(templates, s0, s1)
            out, _ = aggregator.aggregate_ragged(sub, device=device)
            parts.append(out.float().cpu())
            bar.update(int(templates.offsets[s1] - templates.offsets[s0]))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def check_templates(templates: RaggedSets) -> None:
    """Validate the flat template rows once for every aggregator of a run.

    Raises:
        InputError: naming the first bad rows.
    """
    templates.validate()


@contextmanager
def _validated_once(aggregator: Aggregator):
    """Skip the aggregator's per-call input checks (the runner checked the rows once)."""
    previous = getattr(aggregator, "validate_args", None)
    if previous is not None:
        aggregator.validate_args = False
    try:
        yield aggregator
    finally:
        if previous is not None:
            aggregator.validate_args = previous


def _split_curves(report: dict[str, Any], keys: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({k: v for k, v in report.items() if k not in keys}, {k: report[k] for k in keys if k in report})


def evaluate_detailed(data: ProtocolData, aggregators: Mapping[str, Aggregator], device: torch.device | str = "cpu",
                      fars: Sequence[float] = FARS, progress: bool = True) -> EvaluationOutput:
    """Evaluate every aggregator on ``data``; see :func:`evaluate` for the results layout."""
    from tqdm.auto import tqdm

    output = EvaluationOutput({})
    labels = data.labels
    check_templates(data.templates)
    plan = PairPlan(data.pair_left, data.pair_right, data.templates.num_sets)  # shared by all aggregators
    for name, aggregator in tqdm(list(aggregators.items()), desc="aggregators", unit="agg", disable=not progress):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        with _validated_once(aggregator):
            desc = aggregate_templates(aggregator, data.templates, device, progress, desc=f"{name}: templates")
        timings["aggregate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = plan.scores(desc, device=device)
        timings["score_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verification, curves = _split_curves(verification_report(scores, labels, fars), _CURVE_KEYS)
        timings["verification_s"] = time.perf_counter() - t0
        entry: dict[str, Any] = {"verification": verification}
        if data.probes is not None and data.galleries:
            t0 = time.perf_counter()
            ident: dict[str, Any] = {}
            probe_desc = desc[data.probes.positions].to(device)
            for gname, gallery in data.galleries.items():
                rep = open_set_identification(probe_desc, data.probes.subjects.to(device),
                                              desc[gallery.positions].to(device), gallery.subjects.to(device))
                ident[gname], curves[gname] = _split_curves(rep, _ID_CURVE_KEYS)
            ident["mean"] = mean_over_galleries({g: ident[g] for g in data.galleries})
            entry["identification"] = ident
            timings["identification_s"] = time.perf_counter() - t0
        timings["total_s"] = sum(timings.values())
        entry["timings"] = timings
        output.results[name] = entry
        output.scores[name] = scores.numpy()
        output.curves[name] = curves
    return output


def evaluate(data: ProtocolData, aggregators: Mapping[str, Aggregator], device: torch.device | str = "cpu",
             fars: Sequence[float] = FARS, progress: bool = True) -> dict[str, Any]:
    """Evaluate aggregators on a loaded protocol.

    Args:
        data: what a protocol's ``load`` returns.
        aggregators: name -> ready aggregator (eval mode is set here).
        device: where descriptors, scores and 1:N products are computed.
        fars: target FARs for TAR@FAR.
        progress: show progress bars.

    Returns:
        ``{name: {"verification": {"tar_at_far": {"nearest": {FAR: TAR}, "strict": {...}}, "strict": {...},
        "nearest": {...}, "auc", "eer", "num_genuine", "num_impostor"}, "identification": {GALLERY:
        {"rank1", "rank5", "rank10", "tpir@0.01", "tpir@0.1", "num_mated", "num_nonmated", "thresholds"},
        "mean": {...}}, "timings": {...}}}`` (no "identification" when the protocol has no 1:N part).
    """
    return evaluate_detailed(data, aggregators, device, fars, progress).results
