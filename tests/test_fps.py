"""Quality-aware FPS against a plain Python loop; padding, small sets, gradients."""

from __future__ import annotations

import pytest
import torch

from aggregators.fps import quality_weights, select_coreset


def _loop_fps(x: torch.Tensor, norms: torch.Tensor, k: int, gamma: float) -> list[int]:
    """Farthest-point sampling written element by element in float64 Python."""
    rows = [[float(v) for v in r] for r in x.double()]
    n = [float(v) for v in norms.double()]
    unit = []
    for r in rows:
        length = sum(v * v for v in r) ** 0.5
        unit.append([v / length for v in r])
    picks = [max(range(len(n)), key=lambda j: n[j])]
    best = [float("inf")] * len(n)
    while len(picks) < min(k, len(n)):
        c = unit[picks[-1]]
        for j in range(len(n)):
            d = n[j] ** gamma * (1 - sum(a * b for a, b in zip(unit[j], c))) / 2
            best[j] = min(best[j], d)
        free = [j for j in range(len(n)) if j not in picks]
        picks.append(max(free, key=lambda j: best[j]))
    return picks


@pytest.mark.parametrize("size,k,gamma", [(1, 3, 0.01), (2, 3, 0.01), (3, 3, 0.5), (4, 3, 0.01), (40, 5, 0.3), (40, 1, 0.3)])
def test_picks_match_a_plain_loop(make_sets, size, k, gamma):
    f, n, m, _, _ = make_sets([size, 40], dim=16, seed=size)
    x = f * n.unsqueeze(-1)
    sel = select_coreset(x, n, m, k, torch.tensor(gamma))
    want = _loop_fps(x[0, :size], n[0, :size], k, gamma)
    assert sel.valid[0].sum() == len(want)
    assert sel.index[0, : len(want)].tolist() == want
    torch.testing.assert_close(sel.picks[0, : len(want)], x[0, want])


def test_padding_is_never_picked_and_no_element_twice(make_sets):
    sizes = [1, 2, 3, 5, 9]
    f, n, m, _, _ = make_sets(sizes, dim=8, seed=3)  # padding norms are huge: the first pick's trap
    x = f * n.unsqueeze(-1)
    sel = select_coreset(x, n, m, 4, torch.tensor(0.01))
    for b, size in enumerate(sizes):
        picked = sel.index[b][sel.valid[b]].tolist()
        assert len(picked) == min(4, size) and len(set(picked)) == len(picked)
        assert all(i < size for i in picked)


def test_duplicate_elements_are_still_picked_once():
    x = torch.ones(1, 3, 4)  # three identical rows: every distance is 0
    sel = select_coreset(x, torch.full((1, 3), 2.0), torch.ones(1, 3, dtype=torch.bool), 3, torch.tensor(0.01))
    assert sorted(sel.index[0].tolist()) == [0, 1, 2]


def test_training_picks_carry_gradients_to_gamma_and_features(make_sets):
    f, n, m, _, _ = make_sets([6, 3], dim=8, seed=5)
    x = (f * n.unsqueeze(-1)).requires_grad_(True)
    gamma = torch.tensor(0.01, requires_grad=True)
    torch.manual_seed(0)
    sel = select_coreset(x, n, m, 3, gamma, hard_gumbel=True)
    (sel.picks * torch.randn_like(sel.picks)).sum().backward()
    assert gamma.grad is not None and torch.isfinite(gamma.grad) and gamma.grad != 0
    assert torch.isfinite(x.grad).all() and x.grad[m].abs().sum() > 0
    assert (x.grad[~m] == 0).all()


def test_training_draws_follow_the_global_seed(make_sets):
    f, n, m, _, _ = make_sets([30], dim=8, seed=6)
    x = f * n.unsqueeze(-1)
    draw = lambda: select_coreset(x, n, m, 3, torch.tensor(0.01), hard_gumbel=True).index  # noqa: E731
    torch.manual_seed(1)
    a = draw()
    torch.manual_seed(1)
    assert torch.equal(a, draw())
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        seen.add(tuple(draw()[0].tolist()))
    assert len(seen) > 1  # training picks are random, not the argmax every time


def test_quality_weights_zero_for_padding_and_zero_norms():
    n = torch.tensor([[0.0, 4.0, 9.0]])
    m = torch.tensor([[True, True, False]])
    g = torch.tensor(0.5, requires_grad=True)
    w = quality_weights(n, m, g)
    torch.testing.assert_close(w, torch.tensor([[0.0, 2.0, 0.0]]))
    w.sum().backward()
    assert torch.isfinite(g.grad)
