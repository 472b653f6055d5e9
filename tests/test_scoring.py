"""Pair scoring: the GEMM+gather paths equal a plain per-pair loop."""

from __future__ import annotations

import pytest
import torch

from eval_protocols.scoring import PairPlan, compact_index, pair_scores, pair_scores_reference
from facecoreset_plugin.errors import InputError


def _desc(t=60, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(t, d, generator=g), dim=1)


def _loop(desc, left, right):
    return torch.tensor([float(sum(desc[a, k] * desc[b, k] for k in range(desc.shape[1])))
                         for a, b in zip(left.tolist(), right.tolist())])


@pytest.mark.parametrize("block", [1 << 26, 7, 1])
def test_dense_and_blocked_match_loop(block):
    desc = _desc()
    g = torch.Generator().manual_seed(1)
    left = torch.randint(0, 12, (400,), generator=g) * 3  # few distinct left templates, sparse ids
    right = torch.randint(30, 60, (400,), generator=g)
    got = pair_scores(desc, left, right, max_block_elements=block)
    torch.testing.assert_close(got, _loop(desc, left, right), rtol=0, atol=1e-5)
    plan = PairPlan(left, right, 60, max_block_elements=block)
    assert plan.mode == ("dense" if block > 12 * 30 else "blocked")
    other = _desc(seed=5)  # a plan is reused across descriptor sets
    torch.testing.assert_close(plan.scores(other), _loop(other, left, right), rtol=0, atol=1e-5)


def test_sparse_pairs_use_direct_path():
    desc = _desc(200)
    left, right = torch.arange(0, 100), torch.arange(100, 200)  # 100 pairs, 100x100 product
    got = pair_scores(desc, left, right)
    assert PairPlan(left, right, 200).mode == "direct"
    torch.testing.assert_close(got, _loop(desc, left, right), rtol=0, atol=1e-5)
    torch.testing.assert_close(pair_scores_reference(desc, left, right, chunk=7), got, rtol=0, atol=1e-6)


def test_compact_index_matches_unique():
    idx = torch.tensor([9, 3, 3, 0, 9, 5])
    distinct, inv = compact_index(idx, 10)
    u, i = torch.unique(idx, return_inverse=True)
    assert distinct.tolist() == u.tolist() and inv.tolist() == i.tolist()


def test_errors_and_empty():
    desc = _desc(5)
    with pytest.raises(InputError, match=r"pair indices must lie in \[0, 5\)"):
        pair_scores(desc, torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(InputError, match="must be \\[P\\] and equal"):
        pair_scores(desc, torch.tensor([0, 1]), torch.tensor([1]))
    assert pair_scores(desc, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)).numel() == 0
