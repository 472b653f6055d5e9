"""Feature files: every format reads back the same; bad rows and unsafe pickles are refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from eval_protocols.features_io import read_array_file, read_features, write_features
from facecoreset_plugin.errors import InputError, UnsafeFileError


def _features(m=20, d=8, seed=0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(m, d)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f, rng.uniform(1, 30, m).astype(np.float32), rng.uniform(0, 1, m).astype(np.float32)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_roundtrip(tmp_path, suffix):
    f, n, q = _features()
    path = write_features(tmp_path / f"x{suffix}", f, n, q)
    got = read_features(path, expected_rows=20)
    np.testing.assert_array_equal(got.features, f)
    np.testing.assert_array_equal(got.norms, n)
    np.testing.assert_array_equal(got.faceness, q)
    assert not list(tmp_path.glob(".*tmp"))


def test_facecoresetnet_pickle(tmp_path):
    f, n, q = _features()
    path = tmp_path / "feats.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"img_feats": f, "norms": n[:, None], "faceness_scores": q}, fh)
    got = read_features(path)
    np.testing.assert_array_equal(got.norms, n)
    assert got.faceness is not None and got.features.shape == (20, 8)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PAYLOAD_RAN",))


def test_unsafe_pickle_payload_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f, n, q = _features()
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"img_feats": f, "norms": n, "x": _Payload()}, fh)
    with pytest.raises(UnsafeFileError, match="refusing to load"):
        read_features(path)
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_unnormalised_rows_without_norms(tmp_path):
    f, n, _ = _features()
    path = tmp_path / "raw.npz"
    np.savez(path, img_feats=f * n[:, None])
    got = read_features(path)
    np.testing.assert_allclose(got.norms, n, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got.features, axis=1), 1.0, rtol=1e-5)
    assert got.faceness is None


def test_row_count_mismatch(tmp_path):
    f, n, q = _features()
    path = write_features(tmp_path / "x.npz", f, n, q)
    with pytest.raises(InputError, match=r"20 feature rows but the protocol lists 21 images"):
        read_features(path, expected_rows=21)


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN or Inf"), (0.0, "zero length")])
def test_bad_rows_named(tmp_path, bad, what):
    f, n, q = _features()
    f[[3, 11]] = bad
    path = tmp_path / "bad.npz"
    np.savez(path, img_feats=f, norms=n, faceness_scores=q)
    with pytest.raises(InputError, match=rf"2 feature row\(s\) with {what} \(0-based rows 3, 11"):
        read_features(path)


def test_bad_norms_and_shapes(tmp_path):
    f, n, q = _features()
    n[5] = 0
    np.savez(tmp_path / "a.npz", img_feats=f, norms=n)
    with pytest.raises(InputError, match=r"zero or negative norm \(0-based rows 5"):
        read_features(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", img_feats=f, norms=n[:10])
    with pytest.raises(InputError, match=r"'norms' must be \[M\] or \[M,1\] with M=20"):
        read_features(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", feats=f)
    with pytest.raises(InputError, match="missing key 'img_feats'.*'feats'"):
        read_features(tmp_path / "c.npz")


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(InputError, match=r"feature file not found: .*none\.npz \(looked in"):
        read_features(tmp_path / "none.npz")
    (tmp_path / "x.h5").write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported feature file suffix '.h5'"):
        read_features(tmp_path / "x.h5")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        read_features(tmp_path / "broken.npz")


def test_compressed_npz_and_fast_path_agree(tmp_path):
    from eval_protocols.features_io import _read_stored_npz

    f, n, q = _features(m=50, d=16)
    np.savez(tmp_path / "plain.npz", img_feats=f, norms=n[:, None], faceness_scores=q)
    np.savez_compressed(tmp_path / "packed.npz", img_feats=f, norms=n[:, None], faceness_scores=q)
    fast = _read_stored_npz(tmp_path / "plain.npz")
    assert fast is not None and set(fast) == {"img_feats", "norms", "faceness_scores"}
    assert _read_stored_npz(tmp_path / "packed.npz") is None  # compressed: numpy's reader
    a, b = read_features(tmp_path / "plain.npz"), read_features(tmp_path / "packed.npz")
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.norms, b.norms)
    np.savez(tmp_path / "obj.npz", img_feats=np.array([object()], dtype=object))
    assert _read_stored_npz(tmp_path / "obj.npz") is None
    with pytest.raises(InputError, match="unreadable .npz"):
        read_features(tmp_path / "obj.npz")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_read_array_file_returns_every_array_as_stored(tmp_path, suffix):
    f, n, q = _features(m=7, d=5)
    ids = np.arange(7, dtype=np.int64) * 3
    path = tmp_path / f"a{suffix}"
    if suffix == ".npz":
        np.savez(path, f=f, n=n, ids=ids)
    else:
        from safetensors.numpy import save_file

        save_file({"f": f, "n": n, "ids": ids}, str(path))
    got = read_array_file(path)
    assert set(got) == {"f", "n", "ids"} and got["ids"].dtype == np.int64
    for key, want in (("f", f), ("n", n), ("ids", ids)):
        np.testing.assert_array_equal(got[key], want)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_truncated_feature_files_name_the_file(tmp_path, suffix):
    f, n, q = _features()
    good = write_features(tmp_path / f"good{suffix}", f, n, q)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 9])
    with pytest.raises(InputError, match=rf"cut\{suffix}: not a readable \{suffix} file"):
        read_features(cut)


def test_flipped_bytes_in_an_npz_are_detected(tmp_path):
    import numpy as np
    import pytest

    from eval_protocols.features_io import read_array_file
    from facecoreset_plugin.errors import InputError

    path = tmp_path / "f.npz"
    np.savez(path, img_feats=np.ones((50, 8), np.float32))
    raw = bytearray(path.read_bytes())
    at = raw.index(np.ones(8, np.float32).tobytes()) + 100  # inside the array data
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="CRC mismatch"):
        read_array_file(path)
