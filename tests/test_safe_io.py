"""Safe readers never run code from a file; atomic writes never leave half files."""

from __future__ import annotations

import argparse
import os
import pickle

import numpy as np
import pytest
import torch

from facecoreset_plugin.errors import CheckpointError, UnsafeFileError
from facecoreset_plugin.safe_io import OpaqueObject, atomic_write, safe_pickle_load, safe_torch_load


class Payload:
    """Unpickling this touches a marker file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_feature_pickle_with_numpy_and_containers_loads(tmp_path):
    data = {"img_feats": np.random.rand(5, 4).astype(np.float32), "norms": np.ones((5, 1)),
            "faceness_scores": np.linspace(0, 1, 5, dtype=np.float32), "meta": [1, 2.5, "x", (b"y", None), {3}]}
    path = tmp_path / "f.pkl"
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        got = safe_pickle_load(path)
        np.testing.assert_array_equal(got["img_feats"], data["img_feats"])
        assert got["meta"] == data["meta"]


def test_malicious_pickle_is_refused_and_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"img_feats": np.zeros(2), "x": Payload(str(marker))}))
    with pytest.raises(UnsafeFileError, match=r"evil.pkl.*open.*npz"):
        safe_pickle_load(path)
    assert not marker.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros(100)})[:50])
    with pytest.raises(UnsafeFileError, match="not a readable pickle"):
        safe_pickle_load(path)


def test_torch_checkpoint_roundtrip_with_foreign_objects(tmp_path):
    marker = tmp_path / "pwned"
    lin = torch.nn.Linear(4, 3)
    payload = {
        "state_dict": {"m." + k: v for k, v in lin.state_dict().items()},
        "hyper_parameters": {"args": argparse.Namespace(lr=1), "evil": Payload(str(marker))},
        "views": torch.arange(12.0).reshape(3, 4)[:, 1:].t(),  # non-contiguous view
        "half": torch.randn(3).half(), "bf": torch.randn(2).bfloat16(), "i": torch.arange(3),
        "scalar": torch.tensor(2.5), "param": torch.nn.Parameter(torch.ones(2)), "flag": torch.tensor([True]),
    }
    torch.save(payload, tmp_path / "c.ckpt")
    got, opaque = safe_torch_load(tmp_path / "c.ckpt")
    assert not marker.exists()
    assert "argparse.Namespace" in opaque and any(n.endswith(".open") for n in opaque)
    assert isinstance(got["hyper_parameters"]["args"], OpaqueObject)
    for key in ("views", "half", "bf", "i", "scalar", "param", "flag"):
        assert torch.equal(got[key], payload[key].detach()), key
    for k, v in lin.state_dict().items():
        assert torch.equal(got["state_dict"]["m." + k], v)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a torch zip checkpoint"):
        safe_torch_load(tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        safe_torch_load(tmp_path / "missing.ckpt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out" / "results.json"
    with atomic_write(path, "w") as fh:
        fh.write("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert os.listdir(path.parent) == ["results.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only mode
