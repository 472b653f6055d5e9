"""1:1 pair scores from template descriptors: one matrix product of the distinct templates + a gather.

IJB pair lists use few distinct templates per side (IJB-C: 15.66M pairs between 3,531
enrolment and 19,593 probe templates), so ``A @ B.T`` over the distinct rows followed by an
index gather reads each descriptor once instead of twice per pair. When the pairs are sparse
in that product (fewer than 1/``dense_ratio`` of its cells) the pairs are scored directly.
"""

from __future__ import annotations

__all__ = ["pair_scores", "pair_scores_reference", "compact_index"]

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


def pair_scores(desc: Tensor, left: Tensor, right: Tensor, device: torch.device | str | None = None,
                max_block_elements: int = 1 << 26, dense_ratio: float = 8.0) -> Tensor:
    """Cosine scores of template pairs.

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
    if left.shape != right.shape or left.dim() != 1:
        raise InputError(f"pair index tensors must be [P] and equal, got {tuple(left.shape)} and {tuple(right.shape)}")
    t = desc.shape[0]
    if len(left) and (int(left.min()) < 0 or int(right.min()) < 0 or max(int(left.max()), int(right.max())) >= t):
        raise InputError(f"pair indices must lie in [0, {t}) (rows of the descriptor matrix)")
    device = torch.device(device) if device is not None else desc.device
    desc = desc.to(device)
    left, right = left.to(device), right.to(device)
    if len(left) == 0:
        return torch.empty(0, dtype=torch.float32)
    uniq_l, inv_l = compact_index(left, t)
    uniq_r, inv_r = compact_index(right, t)
    n_l, n_r = len(uniq_l), len(uniq_r)
    if n_l * n_r > dense_ratio * len(left):
        return pair_scores_reference(desc, left, right)
    a, b = desc[uniq_l], desc[uniq_r]
    if n_l * n_r <= max_block_elements:
        matrix = a @ b.T
        return matrix.reshape(-1)[inv_l * n_r + inv_r].float().cpu()
    # blocks of left rows: pairs grouped by their left row, one product per block
    order = torch.argsort(inv_l)
    sorted_l = inv_l[order]
    rows_per_block = max(1, max_block_elements // n_r)
    out = torch.empty(len(left), dtype=torch.float32, device=device)
    bounds = torch.searchsorted(sorted_l, torch.arange(0, n_l + rows_per_block, rows_per_block, device=device))
    for blk, r0 in enumerate(range(0, n_l, rows_per_block)):
        p0, p1 = int(bounds[blk]), int(bounds[blk + 1])
        if p0 == p1:
            continue
        idx = order[p0:p1]
        block = a[r0:r0 + rows_per_block] @ b.T
        out[idx] = block.reshape(-1)[(sorted_l[p0:p1] - r0) * n_r + inv_r[idx]].float()
    return out.cpu()
