"""1:1 pair scores from template descriptors: one matrix product of the distinct templates + a gather.

IJB pair lists use few distinct templates per side (IJB-C: 15.66M pairs between 3,531
enrolment and 19,593 probe templates), so ``A @ B.T`` over the distinct rows followed by an
index gather reads each descriptor once instead of twice per pair. When the pairs are sparse
in that product (fewer than 1/``dense_ratio`` of its cells) the pairs are scored directly.
"""

from __future__ import annotations

__all__ = ["PairPlan", "pair_scores", "pair_scores_reference", "compact_index"]

import torch
from torch import Tensor

from facecoreset_plugin.errors import InputError


def compact_index(index: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Distinct values of ``index`` (ascending) and each element's position among them.

    Linear time via a presence mask (no sort); ``index`` values must lie in ``[0, size)``.
    """
    present = torch.zeros(size, dtype=torch.bool, device=index.device)
    present[index] = True
    distinct = torch.nonzero(present).flatten()
    remap = torch.cumsum(present, 0) - 1
    return distinct, remap[index]


def pair_scores_reference(desc: Tensor, left: Tensor, right: Tensor, chunk: int = 1 << 20) -> Tensor:
    """Per-pair gathered dot products in chunks (the straightforward way; for checks)."""
    out = torch.empty(len(left), dtype=torch.float32)
    for s in range(0, len(left), chunk):
        a, b = desc[left[s:s + chunk]], desc[right[s:s + chunk]]
        out[s:s + chunk] = (a * b).sum(-1).float().cpu()
    return out


class PairPlan:
    """How to score one pair list: built once, reused for every aggregator's descriptors.

    Args:
        left: [P] int64 template rows.
        right: [P] int64 template rows.
        num_templates: number of template rows (indices must lie below it).
        max_block_elements: the largest block of the score matrix held at once (memory bound).
        dense_ratio: use the matrix product when it has at most this many cells per pair.
    """

    def __init__(self, left: Tensor, right: Tensor, num_templates: int, max_block_elements: int = 1 << 27,
                 dense_ratio: float = 8.0) -> None:
        if left.shape != right.shape or left.dim() != 1:
            raise InputError(f"pair index tensors must be [P] and equal, got {tuple(left.shape)} and {tuple(right.shape)}")
        t = num_templates
        if len(left) and (int(left.min()) < 0 or int(right.min()) < 0 or max(int(left.max()), int(right.max())) >= t):
            raise InputError(f"pair indices must lie in [0, {t}) (rows of the descriptor matrix)")
        self.left, self.right, self.num_templates = left.cpu(), right.cpu(), t
        self.uniq_l, inv_l = compact_index(self.left, t)
        self.uniq_r, inv_r = compact_index(self.right, t)
        n_l, n_r = len(self.uniq_l), len(self.uniq_r)
        self.mode = "direct" if n_l * n_r > dense_ratio * max(len(left), 1) else (
            "dense" if n_l * n_r <= max_block_elements else "blocked")
        self.flat: Tensor | None = None
        if self.mode == "dense":
            self.flat = inv_l * n_r + inv_r
        elif self.mode == "blocked":
            self.order = torch.argsort(inv_l)
            self.sorted_l = inv_l[self.order]
            self.inv_r_sorted = inv_r[self.order]
            self.rows_per_block = max(1, max_block_elements // n_r)
            self.bounds = torch.searchsorted(self.sorted_l, torch.arange(0, n_l + self.rows_per_block,
                                                                         self.rows_per_block)).tolist()

    def scores(self, desc: Tensor, device: torch.device | str | None = None) -> Tensor:
        """[P] float32 cosine scores on CPU, in pair order, of the unit descriptors ``desc`` [T, D]."""
        if desc.dim() != 2 or desc.shape[0] != self.num_templates:
            raise InputError(f"descriptors must be [{self.num_templates}, D], got shape {tuple(desc.shape)}")
        device = torch.device(device) if device is not None else desc.device
        desc = desc.to(device)
        if len(self.left) == 0:
            return torch.empty(0, dtype=torch.float32)
        if self.mode == "direct":
            return pair_scores_reference(desc, self.left.to(device), self.right.to(device))
        a, b = desc[self.uniq_l.to(device)], desc[self.uniq_r.to(device)]
        if self.mode == "dense":
            return (a @ b.T).reshape(-1)[self.flat.to(device)].float().cpu()
        n_r = b.shape[0]
        out = torch.empty(len(self.left), dtype=torch.float32)
        for blk, r0 in enumerate(range(0, a.shape[0], self.rows_per_block)):
            p0, p1 = self.bounds[blk], self.bounds[blk + 1]
            if p0 == p1:
                continue
            block = a[r0:r0 + self.rows_per_block] @ b.T
            flat = ((self.sorted_l[p0:p1] - r0) * n_r + self.inv_r_sorted[p0:p1]).to(device)
            out[self.order[p0:p1]] = block.reshape(-1)[flat].float().cpu()
        return out


def pair_scores(desc: Tensor, left: Tensor, right: Tensor, device: torch.device | str | None = None,
                max_block_elements: int = 1 << 27, dense_ratio: float = 8.0) -> Tensor:
    """Cosine scores of template pairs (one-off; build a :class:`PairPlan` to score many descriptor sets).

    Args:
        desc: [T, D] unit template descriptors.
        left: [P] int64 rows of ``desc``.
        right: [P] int64 rows of ``desc``.
        device: where to compute (default: ``desc``'s device); the scores come back on CPU.
        max_block_elements: the largest block of the score matrix held at once (memory bound).
        dense_ratio: use the matrix product when it has at most this many cells per pair.

    Returns:
        [P] float32 scores on CPU, in pair order.
    """
    if desc.dim() != 2:
        raise InputError(f"descriptors must be [T,D], got shape {tuple(desc.shape)}")
    plan = PairPlan(left.cpu(), right.cpu(), desc.shape[0], max_block_elements, dense_ratio)
    return plan.scores(desc, device)
