"""Pooling baselines against plain-loop references written from their definitions."""

from __future__ import annotations

import pytest
import torch

from facecoreset_plugin import RaggedSets, load


def _unit(v):
    return v / v.norm()


def reference(name, f, n, media, fc):
    """One set at a time, Python loops, from the documented semantics."""
    if name == "mean":
        return _unit(sum(f[i] for i in range(len(f))) / len(f))
    if name == "quality_weighted":
        return _unit(sum(n[i] * f[i] for i in range(len(f))))
    if name == "media_fusion":
        groups = {}
        for i in range(len(f)):
            groups.setdefault(int(media[i]), []).append(n[i] * fc[i] * f[i])
        return _unit(sum(sum(v) / len(v) for v in groups.values()))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["mean", "quality_weighted", "media_fusion"])
def test_matches_plain_loop(name, make_sets):
    sizes = [1, 2, 5, 11, 30]
    f, n, m, media, fc = make_sets(sizes, dim=16, seed=7, media_per_set=4)
    got = load(name)(f, n, m, media, fc)
    for i, s in enumerate(sizes):
        want = reference(name, f[i, :s].double(), n[i, :s].double(), media[i, :s], fc[i, :s].double())
        torch.testing.assert_close(got[i].double(), want, rtol=1e-5, atol=1e-6)


def test_media_fusion_defaults():
    """No media ids: every image is its own media; no faceness: weight 1 (= quality_weighted)."""
    f = torch.nn.functional.normalize(torch.randn(2, 6, 8), dim=-1)
    n = torch.rand(2, 6) + 0.1
    torch.testing.assert_close(load("media_fusion")(f, n), load("quality_weighted")(f, n))


def test_media_fusion_downweights_a_long_clip():
    """Ten frames of one video count as one media, like one still image."""
    still = torch.tensor([1.0, 0.0])
    frame = torch.tensor([0.0, 1.0])
    f = torch.stack([still] + [frame] * 10)[None]
    n = torch.ones(1, 11)
    media = torch.tensor([[1] + [2] * 10])
    out = load("media_fusion")(f, n, media=media)
    torch.testing.assert_close(out, _unit(torch.tensor([1.0, 1.0]))[None])


@pytest.mark.parametrize("name", ["mean", "quality_weighted", "media_fusion"])
def test_ragged_segment_path_has_no_padding_cost(name):
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([1, 300, 2, 4])
    f = torch.nn.functional.normalize(torch.randn(int(sizes.sum()), 8, generator=g), dim=-1)
    n = torch.rand(len(f), generator=g)
    ids = torch.repeat_interleave(torch.arange(4), sizes)
    media = torch.randint(0, 3, (len(f),), generator=g)
    sets = RaggedSets.from_template_ids(f, n, ids, media, torch.ones(len(f)))
    unit, norm = load(name).aggregate_ragged(sets)
    for s in range(4):
        sl = slice(int(sets.offsets[s]), int(sets.offsets[s + 1]))
        want = reference(name, f[sl].double(), n[sl].double(), media[sl], torch.ones(len(f))[sl].double())
        torch.testing.assert_close(unit[s].double(), want, rtol=1e-5, atol=1e-6)
    assert (norm > 0).all()
