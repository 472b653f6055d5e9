"""Shared fixtures: random face sets with padding, reproducible seeds."""

from __future__ import annotations

import pytest
import torch


def random_sets(sizes: list[int], dim: int = 32, seed: int = 0, media_per_set: int = 3):
    """Padded batch [B,N,D] of unit features with norms, mask, media ids and faceness.

    Padding positions hold garbage (large random values) so a test catches any aggregator
    that lets padding leak into a result.
    """
    g = torch.Generator().manual_seed(seed)
    b, n = len(sizes), max(sizes)
    features = torch.nn.functional.normalize(torch.randn(b, n, dim, generator=g), dim=-1)
    norms = torch.rand(b, n, generator=g) * 30 + 1
    mask = torch.arange(n)[None, :] < torch.tensor(sizes)[:, None]
    media = torch.randint(0, media_per_set, (b, n), generator=g) * 1000 + 7
    faceness = torch.rand(b, n, generator=g) * 0.5 + 0.5
    garbage = torch.randn(b, n, dim, generator=g) * 100
    features = torch.where(mask[..., None], features, garbage)
    norms = torch.where(mask, norms, torch.full_like(norms, 1e3))
    return features, norms, mask, media, faceness


@pytest.fixture
def make_sets():
    return random_sets
