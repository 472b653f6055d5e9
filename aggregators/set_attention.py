"""Masked multi-head attention on padded sets, with packed ``nn.MultiheadAttention`` weights.

``self_attention`` is the textbook form (for the K core rows). ``folded_cross_attention`` lets
K queries attend to a whole set without projecting the set: the key projection is folded into
the queries and the value projection is applied after the attention-weighted sum, which is
exact up to rounding and costs about ``K*heads*D`` multiply-adds per set element instead of
``2*D**2``.
"""

from __future__ import annotations

__all__ = ["AttentionWeights", "per_head_matmul", "self_attention", "fold_queries", "attend_folded",
           "folded_cross_attention"]

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def per_head_matmul(a: Tensor, w: Tensor) -> Tensor:
    """``out[m, h] = a[m, h] @ w[h]`` for ``a [M,H,e]`` and ``w [H,e,d]`` -> ``[M,H,d]``.

    Without autograd it writes each head's GEMM straight into the output (no permute copies).
    """
    if torch.is_grad_enabled() and (a.requires_grad or w.requires_grad):
        return torch.einsum("mhe,hed->mhd", a, w)
    w = w.to(a.dtype)
    out = a.new_empty(a.shape[0], w.shape[0], w.shape[2])
    for h in range(w.shape[0]):
        torch.matmul(a[:, h], w[h], out=out[:, h])
    return out


class AttentionWeights(NamedTuple):
    """The four tensors of an ``nn.MultiheadAttention`` (packed q/k/v input projection)."""

    in_proj_weight: Tensor  # [3D,D]
    in_proj_bias: Tensor  # [3D]
    out_proj_weight: Tensor  # [D,D]
    out_proj_bias: Tensor  # [D]

    @classmethod
    def of(cls, mha: torch.nn.MultiheadAttention) -> "AttentionWeights":
        return cls(mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias)


def self_attention(q: Tensor, w: AttentionWeights, heads: int, slot_mask: Tensor,
                   dropout: float = 0.0, training: bool = False) -> Tensor:
    """Multi-head self-attention of ``q [B,K,D]``; keys where ``~slot_mask [B,K]`` are ignored.

    Same maths as ``nn.MultiheadAttention(q, q, q)`` (dropout on the attention weights).
    """
    b, k, d = q.shape
    dh = d // heads
    qkv = F.linear(q, w.in_proj_weight, w.in_proj_bias).view(b, k, 3, heads, dh).permute(2, 0, 3, 1, 4)
    qh, kh, vh = qkv[0], qkv[1], qkv[2]  # [B,H,K,dh]
    scores = torch.matmul(qh * dh ** -0.5, kh.transpose(-1, -2))
    scores = scores.masked_fill(~slot_mask[:, None, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    if training and dropout > 0:
        p = F.dropout(p, dropout, training=True)
    out = torch.matmul(p.to(vh.dtype), vh).transpose(1, 2).reshape(b, k, d)
    return F.linear(out, w.out_proj_weight, w.out_proj_bias)


def fold_queries(q: Tensor, w: AttentionWeights, heads: int) -> Tensor:
    """Queries ``q [B,K,D]`` with the key projection folded in: ``[B,K*heads,D]`` (row k*heads+h).

    ``folded . key_j`` is head h's attention logit of query k for key j, up to the key bias
    (a per-query constant that softmax ignores).
    """
    b, k, d = q.shape
    dh = d // heads
    wq, wk, _ = w.in_proj_weight.chunk(3, dim=0)
    bq = w.in_proj_bias.chunk(3, dim=0)[0]
    qh = F.linear(q, wq, bq).view(b * k, heads, dh)
    return per_head_matmul(qh * dh ** -0.5, wk.view(heads, dh, d)).reshape(b, k * heads, d)


def attend_folded(scores: Tensor, values: Tensor, key_mask: Tensor, w: AttentionWeights, heads: int,
                  dropout: float = 0.0, training: bool = False) -> Tensor:
    """Finish the cross-attention from logits ``scores [B,K*heads,N]`` -> ``[B,K,D]``.

    ``z_h = sum_j p_hj value_j``, then ``Wv_h z_h + bv_h`` (times ``sum_j p_hj`` under dropout)
    and the output projection.
    """
    b, kh, _ = scores.shape
    d = values.shape[-1]
    k, dh = kh // heads, d // heads
    wv, bv = w.in_proj_weight.chunk(3, dim=0)[2], w.in_proj_bias.chunk(3, dim=0)[2]
    scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    if training and dropout > 0:
        p = F.dropout(p, dropout, training=True)
    z = torch.bmm(p.to(values.dtype), values).view(b * k, heads, d)
    out = per_head_matmul(z, wv.view(heads, dh, d).transpose(1, 2)).reshape(b, k, heads, dh)
    if training and dropout > 0:
        out = out + bv.view(heads, dh) * p.sum(-1).view(b, k, heads, 1).to(out.dtype)
    else:
        out = out + bv.view(heads, dh)
    return F.linear(out.reshape(b, k, d), w.out_proj_weight, w.out_proj_bias)


def folded_cross_attention(q: Tensor, keys: Tensor, values: Tensor, key_mask: Tensor, w: AttentionWeights,
                           heads: int, dropout: float = 0.0, training: bool = False) -> Tensor:
    """Cross-attention of ``q [B,K,D]`` to a set (``keys``/``values [B,N,D]``, ``key_mask [B,N]``).

    Equals ``nn.MultiheadAttention(q, keys, values)`` with padding masked, computed as
    ``softmax((Q_h Wk_h / sqrt(dh)) . key_j) -> z_h = sum_j p_hj value_j -> Wv_h z_h + bv_h``:
    the key bias shifts every score of a query by the same amount (softmax ignores it) and
    the value bias comes out of the sum times ``sum_j p_hj`` (1 without dropout).
    """
    folded = fold_queries(q, w, heads)
    scores = torch.bmm(folded.to(keys.dtype), keys.transpose(1, 2))  # [B,K*H,N]
    return attend_folded(scores, values, key_mask, w, heads, dropout, training)
