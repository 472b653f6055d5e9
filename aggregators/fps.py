"""Quality-aware differentiable farthest-point sampling (FaceCoresetNet's core-template pick).

Pure tensor functions on padded batches. The first pick is the element with the largest norm;
every next pick maximises the running minimum over picks of the quality-aware distance
``d_j = n_j**gamma * (1 - cos(x_j, c)) / 2``. Training draws each pick with a straight-through
hard Gumbel-softmax (gradients reach ``gamma`` and the features); eval takes the argmax.
Padding is never picked and no element is picked twice, so a set with fewer than ``K``
elements yields ``min(K, T)`` valid picks.
"""

from __future__ import annotations

__all__ = ["CoreSelection", "quality_weights", "quality_distance", "select_coreset"]

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class CoreSelection:
    """The picked core template of every set of a padded batch."""

    picks: Tensor  # [B,k,D] picked rows of x (k = min(K, N)); rows where ~valid are filler
    index: Tensor  # [B,k] int64 positions of the picks in the set
    valid: Tensor  # [B,k] bool, slot s is real iff s < min(K, set size)


def quality_weights(norms: Tensor, mask: Tensor, gamma: Tensor) -> Tensor:
    """``n**gamma`` for real elements with ``n > 0``, else 0 (NaN-free gradients for padding)."""
    live = mask & (norms > 0)
    safe = torch.where(live, norms, torch.ones_like(norms))
    return torch.where(live, safe.pow(gamma), torch.zeros_like(norms))


def quality_distance(unit: Tensor, weights: Tensor, center_unit: Tensor) -> Tensor:
    """Distance ``weights_j * (1 - <unit_j, center>) / 2`` of every element to one center.

    Args:
        unit: ``[B,N,D]`` unit rows (``x / |x|``).
        weights: ``[B,N]`` quality weights ``n**gamma``.
        center_unit: ``[B,D]`` unit center.

    Returns:
        ``[B,N]`` distances.
    """
    cos = torch.bmm(unit, center_unit.unsqueeze(-1)).squeeze(-1)
    return weights * ((1 - cos) / 2)


def _draw(logits: Tensor, hard_gumbel: bool, scale: float, tau: float, noise: bool) -> tuple[Tensor, Tensor | None]:
    """Index of one pick per row, plus the straight-through one-hot when ``hard_gumbel``."""
    if hard_gumbel:
        onehot = F.gumbel_softmax(logits * scale, tau=tau, hard=True, dim=-1)
        return onehot.detach().argmax(-1), onehot
    if noise:  # the official eval: argmax of scale*logits + Gumbel noise (tau > 0 leaves argmax as is)
        gumbel = -torch.empty_like(logits).exponential_().log()
        return (logits * scale + gumbel).argmax(-1), None
    return logits.argmax(-1), None


def select_coreset(x: Tensor, norms: Tensor, mask: Tensor, k: int, gamma: Tensor, *,
                   hard_gumbel: bool = False, scale: float = 1.0, tau: float = 1.0,
                   noise: bool = False) -> CoreSelection:
    """Pick ``min(k, T)`` core elements of every set by quality-aware FPS.

    Args:
        x: ``[B,N,D]`` raw features ``n * f`` (padding rows may hold anything finite).
        norms: ``[B,N]`` the quality signal ``n``.
        mask: ``[B,N]`` bool, True for real elements; every set has at least one.
        k: core-template size.
        gamma: scalar tensor, the quality exponent.
        hard_gumbel: draw picks with a straight-through hard Gumbel-softmax (training);
            otherwise deterministic argmax (eval).
        scale: logits multiplier before the Gumbel-softmax.
        tau: Gumbel-softmax temperature.
        noise: in argmax mode, add Gumbel noise to ``scale * logits`` like the official eval.

    Returns:
        The picks; in ``hard_gumbel`` mode they carry straight-through gradients.
    """
    b, n, _ = x.shape
    kk = min(int(k), n)
    x32 = x.float()
    unit = F.normalize(x32, p=2.0, dim=-1)
    weights = quality_weights(norms.float(), mask, gamma.float())
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float32, device=x.device)
    valid = torch.arange(kk, device=x.device)[None, :] < mask.sum(1, keepdim=True)
    fallback = torch.where(mask, torch.zeros((), device=x.device), neg_inf)  # exhausted set: any real element
    available = mask.clone()
    positions = torch.arange(n, device=x.device)
    batch = torch.arange(b, device=x.device)
    score = norms.float()
    running: Tensor | None = None
    indices, onehots = [], []
    for s in range(kk):
        logits = torch.where(available, score, neg_inf)
        logits = torch.where(valid[:, s:s + 1], logits, fallback)
        idx, onehot = _draw(logits, hard_gumbel, scale, tau, noise)
        indices.append(idx)
        available = available & (positions[None, :] != idx[:, None])
        if s == kk - 1:
            if onehot is not None:
                onehots.append(onehot)
            break
        if onehot is not None:
            onehots.append(onehot)
            center = F.normalize(torch.bmm(onehot.unsqueeze(1), x32).squeeze(1), p=2.0, dim=-1)
        else:
            center = unit[batch, idx]
        dist = quality_distance(unit, weights, center)
        running = dist if running is None else torch.minimum(running, dist)
        score = running
    index = torch.stack(indices, dim=1)
    if onehots:
        picks = torch.bmm(torch.stack(onehots, dim=1).to(x.dtype), x)
    else:
        picks = x[batch[:, None], index]
    return CoreSelection(picks=picks, index=index, valid=valid)
