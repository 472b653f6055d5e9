"""Feature bank files: round trips in both formats, clear errors for every malformed input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aggregators.training.bank import FeatureBank, load_bank, save_bank, split_identities
from facecoreset_plugin.errors import InputError


def _arrays(n=12, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    return f, torch.rand(n, generator=g) * 30, torch.arange(n) % 4 * 10 + 5


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip_both_formats(tmp_path, suffix):
    f, n, labels = _arrays()
    media = torch.arange(12) // 2
    save_bank(tmp_path / f"b{suffix}", f, n, labels, media)
    bank = load_bank(tmp_path / f"b{suffix}")
    torch.testing.assert_close(bank.features[:, 0], f)
    torch.testing.assert_close(bank.norms[:, 0], n)
    assert bank.labels.tolist() == labels.tolist() and bank.media.tolist() == media.tolist()
    assert bank.num_classes == 4 and bank.num_views == 1 and bank.dim == 8
    # classes are labels renumbered 0..C-1 in sorted label order
    expected = [sorted(set(labels.tolist())).index(v) for v in labels.tolist()]
    assert bank.classes.tolist() == expected


def test_views_axis_is_accepted(tmp_path):
    f = torch.nn.functional.normalize(torch.randn(5, 3, 4), dim=-1)
    np.savez(tmp_path / "v.npz", features=f.numpy(), norms=np.ones((5, 3), np.float32), labels=np.arange(5))
    bank = load_bank(tmp_path / "v.npz")
    assert bank.num_views == 3 and bank.features.shape == (5, 3, 4)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("labels"), "missing key"),
    (lambda a: a.update(norms=a["norms"][:-1]), "'norms' must be"),
    (lambda a: a.update(features=a["features"] * 3), "unit length"),
    (lambda a: a.update(labels=a["labels"].astype(np.float32)), "integer identity ids"),
    (lambda a: a.update(norms=-a["norms"]), "negative norms"),
    (lambda a: a.update(media=np.zeros(3, np.int64)), "'media' must be"),
    (lambda a: a["features"].__setitem__((2, 0), np.nan), "NaN or Inf"),
])
def test_malformed_banks_raise_input_error_naming_the_problem(tmp_path, change, message):
    f, n, labels = _arrays()
    arrays = {"features": f.numpy(), "norms": n.numpy(), "labels": labels.numpy()}
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message) as info:
        load_bank(tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value)


def test_unknown_suffix_and_pickled_npz_are_refused(tmp_path):
    (tmp_path / "b.pkl").write_bytes(b"x")
    with pytest.raises(InputError, match="use .npz or .safetensors"):
        load_bank(tmp_path / "b.pkl")
    np.savez(tmp_path / "obj.npz", features=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="without pickle"):
        load_bank(tmp_path / "obj.npz")
    with pytest.raises(FileNotFoundError):
        load_bank(tmp_path / "none.npz")


def test_split_identities_is_disjoint_seeded_and_complete():
    f, n, _ = _arrays(n=60)
    bank = FeatureBank(f, n, torch.arange(60) % 20)
    train, val = split_identities(bank, 0.25, seed=3)
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert val.num_classes == 5 and train.num_images + val.num_images == 60
    again, _ = split_identities(bank, 0.25, seed=3)
    assert again.labels.tolist() == train.labels.tolist()
    assert split_identities(bank, 0.0, seed=3)[1] is None
    with pytest.raises(InputError, match="too few"):
        split_identities(FeatureBank(f[:6], n[:6], torch.arange(6) % 3), 0.5, seed=0)


def _corrupt(kind, tmp_path):
    """Write a damaged bank file of the given kind and return its path."""
    f, n, labels = _arrays()
    if kind == "garbage.npz":
        path = tmp_path / kind
        path.write_bytes(b"definitely not a zip archive")
    elif kind == "garbage.safetensors":
        path = tmp_path / kind
        path.write_bytes(b"\xff" * 64)
    elif kind.startswith("truncated"):
        suffix = kind.split(".", 1)[1]
        good = save_bank(tmp_path / f"good.{suffix}", f, n, labels)
        path = tmp_path / kind
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "bad-member.npz":  # zip directory intact, a member's bytes overwritten
        good = save_bank(tmp_path / "good.npz", f, n, labels)
        data = bytearray(good.read_bytes())
        data[4:40] = b"\x00" * 36  # first local header (its signature kept) and .npy magic
        path = tmp_path / kind
        path.write_bytes(bytes(data))
    else:  # empty
        path = tmp_path / kind
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["garbage.npz", "garbage.safetensors", "truncated.npz", "truncated.safetensors",
                                  "bad-member.npz", "empty.safetensors", "empty.npz"])
def test_corrupt_bank_files_raise_input_error_naming_the_file(tmp_path, kind):
    path = _corrupt(kind, tmp_path)
    with pytest.raises(InputError, match=r"not a readable \.(npz|safetensors) file.*re-save") as info:
        load_bank(path)
    assert str(path) in str(info.value)


def test_wrong_suffix_names_the_file_and_the_formats(tmp_path):
    f, n, labels = _arrays()
    save_bank(tmp_path / "b.npz", f, n, labels)
    (tmp_path / "b.npy").write_bytes((tmp_path / "b.npz").read_bytes())
    with pytest.raises(InputError, match=r"b\.npy: unsupported array file suffix '\.npy'; use \.npz or \.safetensors"):
        load_bank(tmp_path / "b.npy")


def test_bfloat16_safetensors_bank_is_widened(tmp_path):
    from safetensors.torch import save_file

    f, n, labels = _arrays()
    save_file({"features": f.bfloat16(), "norms": n.bfloat16(), "labels": labels}, str(tmp_path / "h.safetensors"))
    bank = load_bank(tmp_path / "h.safetensors")
    assert bank.features.dtype == torch.float32
    torch.testing.assert_close(bank.norms[:, 0], n.bfloat16().float(), rtol=0, atol=0)
