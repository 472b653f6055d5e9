"""Ragged sets, padding and size bucketing."""

from __future__ import annotations

import pytest
import torch

from facecoreset_plugin import InputError, RaggedSets


def _ragged(sizes, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.repeat_interleave(torch.arange(len(sizes)) * 10 + 3, torch.tensor(sizes))
    perm = torch.randperm(len(ids), generator=g)
    f = torch.randn(len(ids), dim, generator=g)
    return RaggedSets.from_template_ids(f[perm], torch.rand(len(ids), generator=g), ids[perm]), f, ids


def test_from_template_ids_groups_rows_stably():
    ids = torch.tensor([7, 2, 7, 9, 2, 7])
    f = torch.arange(6.0)[:, None]
    sets = RaggedSets.from_template_ids(f, torch.ones(6), ids)
    assert sets.set_ids.tolist() == [2, 7, 9]
    assert sets.offsets.tolist() == [0, 2, 5, 6]
    assert sets.features[:, 0].tolist() == [1, 4, 0, 2, 5, 3]  # input order kept inside a set
    assert sets.segment_ids().tolist() == [0, 0, 1, 1, 1, 2]


def test_padded_batch_holds_exactly_the_rows():
    sets, _, _ = _ragged([3, 1, 5])
    batch = sets.padded(torch.tensor([2, 0]))
    assert batch.features.shape == (2, 5, 4) and batch.mask.sum(1).tolist() == [5, 3]
    torch.testing.assert_close(batch.features[0], sets.features[4:9])
    torch.testing.assert_close(batch.features[1, :3], sets.features[0:3])
    assert (batch.features[1, 3:] == 0).all() and not batch.mask[1, 3:].any()


def test_buckets_cover_every_set_once_with_little_padding():
    g = torch.Generator().manual_seed(1)
    sizes = (torch.distributions.LogNormal(2.5, 1.0).sample((3000,)).clamp(1, 800)).long().tolist()
    sets, _, _ = _ragged(sizes)
    seen, padded = [], 0
    for idx in sets.buckets(max_elements=20000):
        s = sets.sizes[idx]
        padded += len(idx) * int(s.max())
        seen += idx.tolist()
        assert len(idx) == 1 or len(idx) * int(s.max()) <= 20000
    assert sorted(seen) == list(range(len(sizes)))
    assert padded / sum(sizes) < 1.1  # under 10% padding on a long-tailed mix


def test_bad_ragged_input():
    with pytest.raises(InputError, match="template_ids"):
        RaggedSets.from_template_ids(torch.zeros(3, 2), torch.ones(3), torch.zeros(2))
    with pytest.raises(InputError, match="offsets"):
        RaggedSets(torch.zeros(3, 2), torch.ones(3), torch.tensor([0, 2]))
