"""Masked self-attention and the folded cross-attention against torch.nn.MultiheadAttention."""

from __future__ import annotations

import pytest
import torch

from aggregators.set_attention import AttentionWeights, folded_cross_attention, self_attention


def _mha(dim: int, heads: int, seed: int) -> torch.nn.MultiheadAttention:
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        for p in mha.parameters():  # non-zero biases, so folding them is exercised
            p.add_(torch.randn_like(p) * 0.1)
    return mha


def _inputs(sizes, dim, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = max(sizes)
    keys = torch.randn(len(sizes), n, dim, generator=g) * 3
    values = torch.randn(len(sizes), n, dim, generator=g) * 3
    q = torch.randn(len(sizes), k, dim, generator=g)
    mask = torch.arange(n)[None] < torch.tensor(sizes)[:, None]
    return q, keys, values, mask


@pytest.mark.parametrize("dim,heads", [(32, 4), (512, 8)])
def test_folded_cross_attention_equals_multihead_attention(dim, heads):
    mha = _mha(dim, heads, 0)
    q, keys, values, mask = _inputs([1, 2, 7, 40], dim)
    want = mha(q, keys, values, key_padding_mask=~mask, need_weights=False)[0]
    got = folded_cross_attention(q, keys, values, mask, AttentionWeights.of(mha), heads)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_self_attention_equals_multihead_attention_with_slot_mask():
    mha = _mha(32, 4, 1)
    q, _, _, _ = _inputs([5], 32, k=4)
    q = q.repeat(3, 1, 1) + torch.randn(3, 4, 32)
    slots = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    want = mha(q, q, q, key_padding_mask=~slots, need_weights=False)[0]
    got = self_attention(q, AttentionWeights.of(mha), 4, slots)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_folded_gradients_equal_the_unfolded_ones():
    mha = _mha(32, 4, 2).train()
    q, keys, values, mask = _inputs([3, 9], 32, seed=3)
    grads = []
    for fn in (lambda: mha(q, keys, values, key_padding_mask=~mask, need_weights=False)[0],
               lambda: folded_cross_attention(q, keys, values, mask, AttentionWeights.of(mha), 4, 0.0, True)):
        for t in (q, keys, values):
            t.requires_grad_(True).grad = None
        mha.zero_grad()
        mha.dropout = 0.0
        (fn() ** 2).sum().backward()
        grads.append([t.grad.clone() for t in (q, keys, values)] + [p.grad.clone() for p in mha.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_dropout_keeps_the_value_bias_exact():
    """With dropout the attention rows no longer sum to 1; the value bias must follow them."""
    mha = _mha(16, 2, 4)
    q, keys, values, mask = _inputs([6], 16, seed=5)
    w = AttentionWeights.of(mha)
    torch.manual_seed(0)
    got = folded_cross_attention(q, keys, values, mask, w, 2, 0.5, True)
    torch.manual_seed(0)  # same dropout draw, applied by hand to the plain formula
    wq, wk, wv = w.in_proj_weight.chunk(3)
    bq, bk, bv = w.in_proj_bias.chunk(3)
    Q = (q @ wq.T + bq).view(1, 3, 2, 8).transpose(1, 2)
    K = (keys @ wk.T + bk).view(1, 6, 2, 8).transpose(1, 2)
    V = (values @ wv.T + bv).view(1, 6, 2, 8).transpose(1, 2)
    p = torch.softmax(Q @ K.transpose(-1, -2) / 8 ** 0.5, -1).transpose(1, 2).reshape(1, 6, 6)
    p = torch.nn.functional.dropout(p, 0.5, True).view(1, 3, 2, 6).transpose(1, 2)
    want = (p @ V).transpose(1, 2).reshape(1, 3, 16) @ w.out_proj_weight.T + w.out_proj_bias
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
