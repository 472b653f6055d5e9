"""1:N open-set identification against one gallery: CMC rank-k, TPIR@FPIR and the DIR curve.

Definitions (per gallery, e.g. IJB-C G1 or G2, IJB-B S1 or S2):

* A probe is *mated* when its subject is enrolled in the gallery, *non-mated* otherwise.
* A subject's score is its best gallery template's score (dot product of unit descriptors).
* The mate's rank is the number of enrolled subjects scoring at or above the mate (ties with
  another subject count against the probe), so rank 1 means the mate strictly beats the rest.
* CMC rank-k: share of mated probes whose mate's rank is at most k.
* TPIR@FPIR f: threshold t = the ``max(floor(f * N_nonmated), 1)``-th largest of the non-mated
  probes' best gallery scores; a mated probe counts when its mate is rank 1 and its score is
  strictly above t. With no non-mated probe, FPIR cannot be measured: TPIR and t are NaN (with
  a warning). With no mated probe, CMC and TPIR are NaN (with a warning).

Functional core: :func:`probe_statistics` (per-probe numbers, chunked over probes) and
:func:`identification_from_statistics`; :func:`open_set_identification` chains them and
:class:`OpenSetIdentification` wraps them as a torchmetrics ``Metric``.
"""

from __future__ import annotations

__all__ = [
    "RANKS",
    "FPIRS",
    "probe_statistics",
    "identification_from_statistics",
    "open_set_identification",
    "mean_over_galleries",
    "OpenSetIdentification",
]

import math
import warnings
from decimal import Decimal
from typing import Any, Sequence

import torch
from torch import Tensor

from facecoreset_plugin.errors import InputError

from .metrics import far_key

RANKS: tuple[int, ...] = (1, 5, 10)
FPIRS: tuple[float, ...] = (0.01, 0.1)

_CMC_MAX_RANK = 20  # the CMC curve in reports covers ranks 1..max(20, largest requested rank)
_DIR_POINTS = 1000  # at most this many (log-spaced) points on the DIR curve in reports


# ----------------------------------------------------------------------------- validation


def _check_descriptors(desc: Tensor, subjects: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if not isinstance(desc, Tensor) or not isinstance(subjects, Tensor):
        raise InputError(f"{what}: descriptors and subject ids must be torch tensors")
    if desc.ndim != 2:
        raise InputError(f"{what}: descriptors must be [num_templates, dim], got shape {tuple(desc.shape)}")
    subjects = subjects.detach().flatten()
    if subjects.numel() != desc.shape[0]:
        raise InputError(
            f"{what}: {desc.shape[0]} descriptor rows but {subjects.numel()} subject ids; "
            "give one subject id per template"
        )
    if subjects.is_floating_point() or subjects.dtype == torch.bool:
        raise InputError(f"{what}: subject ids must be an integer tensor, got {subjects.dtype}")
    desc = desc.detach()
    if not desc.is_floating_point():
        raise InputError(f"{what}: descriptors must be floating point, got {desc.dtype}")
    if desc.numel():
        bad = ~torch.isfinite(desc).all(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise InputError(
                f"{what}: {int(bad.sum())} descriptor row(s) contain NaN/inf, first at row {i} "
                f"(subject {subjects[i].item()}); check the features of that template"
            )
    return desc, subjects.long()


def _check_levels(ranks: Sequence[int], fpirs: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    ranks = tuple(int(k) for k in ranks)
    fpirs = tuple(float(f) for f in fpirs)
    if any(k < 1 for k in ranks):
        raise InputError(f"CMC ranks must be >= 1, got {ranks}")
    if any(not 0.0 < f <= 1.0 for f in fpirs):
        raise InputError(f"FPIR values must be in (0, 1], got {fpirs}")
    return ranks, fpirs


# ----------------------------------------------------------------------------- functional core


class _Gallery:
    """Gallery descriptors with each template's subject slot (0..S-1, subjects sorted)."""

    def __init__(self, desc: Tensor, subjects: Tensor) -> None:
        desc, subjects = _check_descriptors(desc, subjects, "gallery")
        if desc.shape[0] == 0:
            raise InputError("gallery: no templates; check the gallery CSV")
        self.desc = desc
        self.subject_ids, self.slot = torch.unique(subjects, return_inverse=True)
        self.one_per_subject = self.subject_ids.numel() == desc.shape[0]


def _subject_scores(scores: Tensor, gallery: _Gallery) -> Tensor:
    """[P, G] template scores -> [P, S] subject scores (best template per subject)."""
    if gallery.one_per_subject:
        out = torch.empty_like(scores)
        out[:, gallery.slot.to(scores.device)] = scores
        return out
    out = scores.new_full((scores.shape[0], gallery.subject_ids.numel()), -math.inf)
    index = gallery.slot.to(scores.device).expand(scores.shape[0], -1)
    return out.scatter_reduce_(1, index, scores, reduce="amax", include_self=True)


def _probe_statistics(probe_desc: Tensor, probe_subjects: Tensor, gallery: _Gallery,
                      chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:
    device = gallery.desc.device
    ids = gallery.subject_ids.to(device)
    ranks, mate_scores, nonmated_best = [], [], []
    for start in range(0, probe_desc.shape[0], chunk_size):
        desc = probe_desc[start:start + chunk_size].to(device=device, dtype=gallery.desc.dtype)
        subj = probe_subjects[start:start + chunk_size].to(device)
        scores = _subject_scores(desc @ gallery.desc.T, gallery)  # [c, S]
        pos = torch.searchsorted(ids, subj).clamp_(max=ids.numel() - 1)
        mated = ids[pos] == subj
        mate = scores[mated].gather(1, pos[mated].unsqueeze(1))  # [m, 1]
        ranks.append((scores[mated] >= mate).sum(dim=1).cpu())
        mate_scores.append(mate.squeeze(1).cpu())
        nonmated_best.append(scores[~mated].amax(dim=1).cpu())
    if not ranks:
        empty = torch.empty(0, dtype=gallery.desc.dtype)
        return torch.empty(0, dtype=torch.long), empty, empty.clone()
    return torch.cat(ranks), torch.cat(mate_scores), torch.cat(nonmated_best)


def probe_statistics(
    probe_desc: Tensor, probe_subjects: Tensor, gallery_desc: Tensor, gallery_subjects: Tensor,
    chunk_size: int = 4096,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-probe search results against one gallery, scoring ``chunk_size`` probes at a time.

    Returns:
        mate_rank: [M] int64 rank of each mated probe's mate (1 = best);
        mate_score: [M] the mate subject's score for those probes;
        nonmated_best: [U] best gallery score of each non-mated probe (all on the CPU).
    """
    gallery = _Gallery(gallery_desc, gallery_subjects)
    probe_desc, probe_subjects = _check_descriptors(probe_desc, probe_subjects, "probes")
    _check_dims(probe_desc, gallery)
    return _probe_statistics(probe_desc, probe_subjects, gallery, max(1, int(chunk_size)))


def _check_dims(probe_desc: Tensor, gallery: _Gallery) -> None:
    if probe_desc.shape[1] != gallery.desc.shape[1]:
        raise InputError(
            f"probe descriptors have dim {probe_desc.shape[1]} but gallery descriptors dim "
            f"{gallery.desc.shape[1]}; both must come from the same aggregator and backbone"
        )


def _rank_of_threshold(fpir: float, num_nonmated: int) -> int:
    """max(floor(f * N), 1), with f read as the decimal it was written as (0.29 * 100 -> 29)."""
    return max(int(Decimal(repr(fpir)) * num_nonmated), 1)


def identification_from_statistics(
    mate_rank: Tensor, mate_score: Tensor, nonmated_best: Tensor,
    ranks: Sequence[int] = RANKS, fpirs: Sequence[float] = FPIRS,
) -> dict[str, Any]:
    """CMC, TPIR@FPIR and the DIR curve from :func:`probe_statistics`' output.

    Returns:
        ``{"rank1", "rank5", "rank10", "tpir@0.01", "tpir@0.1", "num_mated", "num_nonmated",
        "thresholds": {"0.01": t, "0.1": t}, "cmc": [rank 1..R], "dir": {"fpir": [...],
        "tpir": [...]}}``, plain Python values; rates are fractions.
    """
    ranks, fpirs = _check_levels(ranks, fpirs)
    num_mated, num_nonmated = int(mate_rank.numel()), int(nonmated_best.numel())
    nan = float("nan")
    if num_mated == 0:
        warnings.warn("open-set identification: no mated probe (no probe subject is enrolled in the "
                      "gallery); CMC and TPIR are NaN", stacklevel=2)
    if num_nonmated == 0:
        warnings.warn("open-set identification: no non-mated probe, so FPIR cannot be measured; "
                      "TPIR@FPIR is NaN", stacklevel=2)
    max_rank = max(_CMC_MAX_RANK, *ranks)
    hist = torch.bincount(mate_rank.clamp(max=max_rank + 1), minlength=max_rank + 2)
    cmc = (torch.cumsum(hist, 0)[1:max_rank + 1].double() / num_mated).tolist() if num_mated else [nan] * max_rank

    out: dict[str, Any] = {f"rank{k}": cmc[k - 1] for k in ranks}
    # rank-1 mates' scores sorted ascending: TPIR(t) = share strictly above t
    hits = torch.sort(mate_score[mate_rank == 1].double()).values
    desc_nm = torch.sort(nonmated_best.double(), descending=True).values

    def tpir_at(threshold: Tensor) -> Tensor:
        above = hits.numel() - torch.searchsorted(hits, threshold, right=True)
        return above.double() / num_mated if num_mated else torch.full_like(threshold, nan)

    thresholds = {}
    for f in fpirs:
        if num_nonmated:
            t = desc_nm[_rank_of_threshold(f, num_nonmated) - 1]
            out[f"tpir@{far_key(f)}"] = float(tpir_at(t.reshape(1))[0])
            thresholds[far_key(f)] = float(t)
        else:
            out[f"tpir@{far_key(f)}"] = nan
            thresholds[far_key(f)] = nan
    out["num_mated"] = num_mated
    out["num_nonmated"] = num_nonmated
    out["thresholds"] = thresholds
    out["cmc"] = cmc
    if num_nonmated:
        grid = torch.logspace(0, math.log10(num_nonmated), _DIR_POINTS, dtype=torch.float64).floor().long()
        wanted = torch.tensor([1, num_nonmated] + [_rank_of_threshold(f, num_nonmated) for f in fpirs])
        k = torch.unique(torch.cat([grid, wanted]).clamp(1, num_nonmated))
        out["dir"] = {"fpir": (k.double() / num_nonmated).tolist(), "tpir": tpir_at(desc_nm[k - 1]).tolist()}
    else:
        out["dir"] = {"fpir": [], "tpir": []}
    return out


def open_set_identification(
    probe_desc: Tensor, probe_subjects: Tensor, gallery_desc: Tensor, gallery_subjects: Tensor,
    ranks: Sequence[int] = RANKS, fpirs: Sequence[float] = FPIRS, chunk_size: int = 4096,
) -> dict[str, Any]:
    """Open-set 1:N identification of probe templates against one gallery.

    Args:
        probe_desc: [P, D] unit probe descriptors (any device; the gallery's device is used).
        probe_subjects: [P] integer subject ids of the probes.
        gallery_desc: [G, D] unit gallery descriptors.
        gallery_subjects: [G] integer subject ids; a subject may own several templates.
        ranks: CMC ranks to report.
        fpirs: FPIR levels for TPIR.
        chunk_size: probes scored per matrix product (bounds memory at chunk_size x G).

    Returns:
        See :func:`identification_from_statistics`.
    """
    stats = probe_statistics(probe_desc, probe_subjects, gallery_desc, gallery_subjects, chunk_size)
    return identification_from_statistics(*stats, ranks=ranks, fpirs=fpirs)


def mean_over_galleries(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean of the scalar rates (``rank*``, ``tpir@*``) over galleries, e.g. G1 and G2."""
    if not results:
        raise InputError("mean_over_galleries: no gallery results given")
    keys = [k for k, v in next(iter(results.values())).items()
            if (k.startswith("rank") or k.startswith("tpir@")) and isinstance(v, float)]
    return {k: sum(r[k] for r in results.values()) / len(results) for k in keys}


# ----------------------------------------------------------------------------- Metric shell
#
# Importing torchmetrics also imports matplotlib and takes seconds, so the ``Metric`` class is
# built on first access (``from eval_protocols.identification import OpenSetIdentification``), not at import time.


def _build_opensetidentification() -> type:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat

    class OpenSetIdentification(Metric):
        """Open-set identification as a torchmetrics ``Metric``; the gallery is fixed at construction.

        ``update(probe_desc, probe_subjects)`` per chunk of probes; ``compute()`` returns the
        :func:`open_set_identification` dict of all probes seen.

        Args:
            gallery_desc: [G, D] gallery descriptors (moved with the metric by ``.to(device)``).
            gallery_subjects: [G] integer subject ids.
            ranks: CMC ranks to report.
            fpirs: FPIR levels for TPIR.
            chunk_size: probes scored per matrix product.
            **kwargs: passed to ``torchmetrics.Metric``.
        """

        is_differentiable = False
        higher_is_better = True
        full_state_update = False

        def __init__(self, gallery_desc: Tensor, gallery_subjects: Tensor, ranks: Sequence[int] = RANKS,
                     fpirs: Sequence[float] = FPIRS, chunk_size: int = 4096, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.ranks, self.fpirs = _check_levels(ranks, fpirs)
            self.chunk_size = max(1, int(chunk_size))
            gallery = _Gallery(gallery_desc, gallery_subjects)
            self.register_buffer("gallery_desc", gallery.desc.clone(), persistent=False)
            self.register_buffer("gallery_subjects", gallery_subjects.detach().flatten().long().clone(), persistent=False)
            self.add_state("mate_rank", default=[], dist_reduce_fx="cat")
            self.add_state("mate_score", default=[], dist_reduce_fx="cat")
            self.add_state("nonmated_best", default=[], dist_reduce_fx="cat")

        def update(self, probe_desc: Tensor, probe_subjects: Tensor) -> None:  # type: ignore[override]
            """Search one chunk of probes in the gallery and keep the per-probe results."""
            gallery = _Gallery(self.gallery_desc, self.gallery_subjects)
            probe_desc, probe_subjects = _check_descriptors(probe_desc, probe_subjects, "probes")
            _check_dims(probe_desc, gallery)
            rank, score, best = _probe_statistics(probe_desc, probe_subjects, gallery, self.chunk_size)
            self.mate_rank.append(rank)
            self.mate_score.append(score)
            self.nonmated_best.append(best)

        def compute(self) -> dict[str, Any]:  # type: ignore[override]
            """The :func:`open_set_identification` dict of every probe seen since the last reset."""
            if not self.mate_rank:
                raise InputError("OpenSetIdentification.compute() called before any update(probes, subjects)")
            return identification_from_statistics(
                dim_zero_cat(self.mate_rank), dim_zero_cat(self.mate_score), dim_zero_cat(self.nonmated_best),
                ranks=self.ranks, fpirs=self.fpirs,
            )

    OpenSetIdentification.__module__, OpenSetIdentification.__qualname__ = __name__, "OpenSetIdentification"
    return OpenSetIdentification


def __getattr__(name: str) -> Any:
    if name == "OpenSetIdentification":
        cls = _build_opensetidentification()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
