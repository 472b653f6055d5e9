"""Set sampler: sizes in range, one identity per set, balanced epochs, DDP ranks disjoint,
batches a pure function of (seed, step, rank), clips made of near-duplicates of one seed."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from aggregators.training.bank import FeatureBank
from aggregators.training.sampler import SamplerConfig, SetSampler
from facecoreset_plugin.errors import InputError


def _bank(num_ids=30, per_id=5, d=8, views=1, media=False):
    g = torch.Generator().manual_seed(0)
    n = num_ids * per_id
    f = torch.nn.functional.normalize(torch.randn(n, views, d, generator=g), dim=-1)
    labels = torch.arange(num_ids).repeat_interleave(per_id)
    m = torch.arange(n) // 2 if media else None
    return FeatureBank(f.squeeze(1) if views == 1 else f, torch.rand(n, views, generator=g).squeeze(1) * 20 + 1,
                       labels, m)


def _row_of(bank, vec):
    """(row, view) of a bank feature equal to ``vec``, else None (a jittered copy)."""
    hit = torch.nonzero((bank.features - vec).abs().amax(-1) < 1e-6)
    return tuple(hit[0].tolist()) if len(hit) else None


def test_sizes_targets_and_membership():
    bank = _bank()
    s = SetSampler(bank, SamplerConfig(min_size=3, max_size=7, sets_per_batch=6, clip_prob=0.0), seed=1)
    for step in range(5):
        b = s.batch(step)
        sizes = b.mask.sum(1)
        assert bool(((sizes >= 3) & (sizes <= 7)).all())
        for i in range(len(sizes)):
            for j in range(int(sizes[i])):
                row, _ = _row_of(bank, b.features[i, j])
                assert int(bank.classes[row]) == int(b.targets[i])
                assert float(bank.norms[row, 0]) == pytest.approx(float(b.norms[i, j]))
        assert bool((b.features[~b.mask] == 0).all())


def test_each_identity_once_per_epoch_and_ranks_disjoint():
    bank = _bank(num_ids=24)
    cfg = SamplerConfig(sets_per_batch=4)
    ranks = [SetSampler(bank, cfg, seed=2, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == 3
    seen = Counter()
    for step in range(3):
        ids = [set(s.identities(step).tolist()) for s in ranks]
        assert ids[0].isdisjoint(ids[1])
        seen.update(ids[0] | ids[1])
    assert sorted(seen) == list(range(24)) and set(seen.values()) == {1}


def test_batches_are_a_pure_function_of_seed_step_rank():
    bank = _bank()
    a = SetSampler(bank, SamplerConfig(sets_per_batch=5), seed=3)
    b = SetSampler(bank, SamplerConfig(sets_per_batch=5), seed=3)
    b.batch(0), b.batch(7)  # drawing other steps first changes nothing
    assert torch.equal(a.batch(4).features, b.batch(4).features)
    c = SetSampler(bank, SamplerConfig(sets_per_batch=5), seed=4)
    assert not torch.equal(a.batch(4).features, c.batch(4).features)


def test_clips_use_views_then_media_then_jitter():
    cfg = SamplerConfig(min_size=3, max_size=3, sets_per_batch=5, clip_prob=1.0, max_clip_len=3)
    views = _bank(views=4)
    b = SetSampler(views, dataclasses_replace(cfg, min_size=2, max_size=2), seed=0).batch(0)
    for i in range(5):  # a set of 2 with clip_prob 1 is one clip: 2 distinct views of one image
        hits = [_row_of(views, b.features[i, j]) for j in range(2)]
        assert len({r for r, _ in hits}) == 1 and len({v for _, v in hits}) == 2
    media = _bank(per_id=6, media=True)
    b = SetSampler(media, dataclasses_replace(cfg, max_clip_len=2, min_size=2, max_size=2), seed=0).batch(0)
    for i in range(5):  # two frames of one media
        rows = [_row_of(media, b.features[i, j])[0] for j in range(2)]
        assert len({int(media.media[r]) for r in rows}) == 1 and rows[0] != rows[1]
    plain = _bank()
    b = SetSampler(plain, dataclasses_replace(cfg, max_clip_len=10), seed=0).batch(0)
    for i in range(5):  # the seed itself, then jittered near-duplicates of it
        seed = b.features[i, 0]
        assert _row_of(plain, seed) is not None
        for j in (1, 2):
            assert _row_of(plain, b.features[i, j]) is None
            assert float(b.features[i, j] @ seed) > 0.99
            assert float(b.features[i, j].norm()) == pytest.approx(1.0, abs=1e-5)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_bad_configs_and_small_banks_are_user_errors():
    with pytest.raises(InputError, match="min_size"):
        SetSampler(_bank(), SamplerConfig(min_size=5, max_size=2))
    with pytest.raises(InputError, match="identities"):
        SetSampler(_bank(num_ids=6), SamplerConfig(sets_per_batch=4), world_size=2)
