"""The Aggregator contract, checked for every registered aggregator (built-in or installed)."""

from __future__ import annotations

import pytest
import torch

from facecoreset_plugin import InputError, RaggedSets, available, load, registry

NAMES = available("aggregators")
DIM = 512  # learned aggregators (FaceCoresetNet) are built for 512-d features


@pytest.fixture(params=NAMES)
def aggregator(request):
    torch.manual_seed(0)
    return load(request.param).eval()


def test_every_builtin_is_registered_through_entry_points():
    dists = {n: registry("aggregators").info(n).distribution for n in NAMES}
    assert dists["mean"] == "facecoreset"


def test_output_is_unit_descriptor_per_set(aggregator, make_sets):
    f, n, m, media, fc = make_sets([1, 2, 3, 4, 9], dim=DIM)
    unit, norm = aggregator.embed(f, n, m, media, fc)
    assert unit.shape == (5, DIM) and norm.shape == (5,)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(5), rtol=0, atol=1e-5)
    assert torch.isfinite(norm).all() and (norm > 0).all()
    torch.testing.assert_close(aggregator(f, n, m, media, fc), unit)


def test_padding_never_changes_a_result(aggregator, make_sets):
    sizes = [1, 2, 3, 4, 7, 25]
    f, n, m, media, fc = make_sets(sizes, dim=DIM, seed=1)
    batched = aggregator(f, n, m, media, fc)
    for i, s in enumerate(sizes):
        alone = aggregator(f[i:i + 1, :s], n[i:i + 1, :s], None, media[i:i + 1, :s], fc[i:i + 1, :s])
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_order_of_elements_does_not_matter(aggregator, make_sets):
    f, n, m, media, fc = make_sets([12], dim=DIM, seed=2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    a = aggregator(f, n, m, media, fc)
    b = aggregator(f[:, perm], n[:, perm], m[:, perm], media[:, perm], fc[:, perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ragged_equals_padded(aggregator, make_sets):
    sizes = [3, 1, 8, 2, 5]
    f, n, m, media, fc = make_sets(sizes, dim=DIM, seed=4)
    rows = m.nonzero(as_tuple=True)
    ids = torch.tensor([10, 4, 99, 7, 55]).repeat_interleave(torch.tensor(sizes))
    sets = RaggedSets.from_template_ids(f[rows], n[rows], ids, media[rows], fc[rows])
    unit, _ = aggregator.aggregate_ragged(sets)
    order = torch.argsort(torch.tensor([10, 4, 99, 7, 55]))
    torch.testing.assert_close(unit, aggregator(f, n, m, media, fc)[order], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case, match",
    [
        ("rank", r"\[B,N,D\]"),
        ("norms_shape", r"norms must be \[B,N\]"),
        ("norms_trailing_1", "squeeze the trailing 1"),
        ("mask_dtype", "mask must be a bool"),
        ("nan", "NaN or Inf"),
        ("empty_set", "at least one real element"),
    ],
)
def test_bad_input_gets_a_clear_error(aggregator, make_sets, case, match):
    f, n, m, media, fc = make_sets([3, 2], dim=DIM)
    kwargs = dict(features=f, norms=n, mask=m)
    if case == "rank":
        kwargs["features"] = f[0]
    elif case == "norms_shape":
        kwargs["norms"] = n[:, :2]
    elif case == "norms_trailing_1":
        kwargs["norms"] = n[..., None]
    elif case == "mask_dtype":
        kwargs["mask"] = m.float()
    elif case == "nan":
        kwargs["features"] = f.clone()
        kwargs["features"][1, 0, 0] = float("nan")
    elif case == "empty_set":
        kwargs["mask"] = m.clone()
        kwargs["mask"][1] = False
    with pytest.raises(InputError, match=match):
        aggregator(**kwargs)


def test_ragged_input_is_validated_once_with_clear_errors(aggregator):
    f = torch.nn.functional.normalize(torch.randn(5, DIM), dim=-1)
    n = torch.rand(5) + 0.5
    empty = RaggedSets(f, n, torch.tensor([0, 2, 2, 5]))  # the middle set has no element
    with pytest.raises(InputError, match=r"empty sets at positions \[1\]"):
        aggregator.aggregate_ragged(empty)
    bad = f.clone()
    bad[3, 7] = float("inf")
    with pytest.raises(InputError, match=r"NaN or Inf .* flat rows \[3\]"):
        aggregator.aggregate_ragged(RaggedSets(bad, n, torch.tensor([0, 2, 5])))
    with pytest.raises(InputError, match=r"norms must be >= 0; negative at flat rows \[0\]"):
        aggregator.aggregate_ragged(RaggedSets(f, n * torch.tensor([-1.0, 1, 1, 1, 1]), torch.tensor([0, 2, 5])))


def test_threaded_buckets_match_serial_and_restore_torch_threads(aggregator, make_sets):
    sizes = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    f, n, m, media, fc = make_sets(sizes, dim=DIM, seed=5)
    rows = m.nonzero(as_tuple=True)
    ids = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    sets = RaggedSets.from_template_ids(f[rows], n[rows], ids, media[rows], fc[rows])
    assert len(list(sets.buckets())) > 2  # several buckets, so the pool really runs
    threads = torch.get_num_threads()
    serial, serial_norms = aggregator.aggregate_ragged(sets, workers=1)
    pooled, pooled_norms = aggregator.aggregate_ragged(sets, workers=3)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(pooled, serial, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled_norms, serial_norms, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():  # the runner's mode reaches the worker threads
        inferred, _ = aggregator.aggregate_ragged(sets, workers=3)
    torch.testing.assert_close(inferred, serial, rtol=1e-5, atol=1e-5)
