"""Resumable extraction: synthetic IJB loose crops with known landmarks, tiny real backbones on CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facecoreset_plugin import InputError
from facecoreset_plugin.backbones.align import TEMPLATE_112, align_face
from facecoreset_plugin.backbones.base import Backbone, Preprocess
from facecoreset_plugin.backbones.extract import (
    batches_for_chunks,
    chunk_bounds,
    extract_features,
    merge_chunks,
    shard_chunks,
)


class TinyNet(Backbone):
    """A small real backbone with fixed (seeded) weights."""

    def __init__(self) -> None:
        super().__init__(Preprocess(channel_order="BGR"), 16)
        g = torch.Generator().manual_seed(7)
        self.conv = nn.Conv2d(3, 8, 8, stride=8)
        self.fc = nn.Linear(8 * 2 * 2, 16)
        for p in self.parameters():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def embed(self, images):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(images)), 2).flatten(1))


def tiny_factory(checkpoint=None, **config):
    return TinyNet().eval()


def make_ijb(root, n=10, protocol="ijbc", seed=0):
    """Write an IJB-like folder: loose crops of random faces, landmarks a known similarity of the template."""
    rng = np.random.default_rng(seed)
    up = protocol.upper()
    (root / up / "meta").mkdir(parents=True)
    (root / up / "loose_crop").mkdir()
    lines = []
    for i in range(n):
        h, w = rng.integers(130, 170, size=2)
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        name = f"{i + 1}.png"
        Image.fromarray(img).save(root / up / "loose_crop" / name)
        s, a = rng.uniform(0.9, 1.2), rng.uniform(-0.3, 0.3)
        rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = (TEMPLATE_112 - 56) @ rot.T + [w / 2, h / 2]
        face = rng.uniform(0.5, 1.0)
        lines.append(" ".join([name] + [f"{v:.4f}" for v in pts.reshape(-1)] + [f"{face:.4f}"]))
    (root / up / "meta" / f"{protocol}_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    return root


def reference_features(root, protocol="ijbc", flip=False):
    """A plain per-image loop: read, align, embed one image at a time."""
    up = protocol.upper()
    net = TinyNet().eval()
    raws, faces = [], []
    for line in (root / up / "meta" / f"{protocol}_name_5pts_score.txt").read_text().split("\n"):
        if not line:
            continue
        parts = line.split()
        img = torch.from_numpy(np.asarray(Image.open(root / up / "loose_crop" / parts[0]).convert("RGB")).copy())
        aligned = align_face(img.permute(2, 0, 1), np.array(parts[1:11], dtype=np.float32).reshape(5, 2))
        with torch.no_grad():
            x = net.prepare(aligned[None])
            raw = net.embed(x) + (net.embed(x.flip(3)) if flip else 0)
        raws.append(raw[0].numpy())
        faces.append(float(parts[11]))
    raw = np.stack(raws)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return raw / norms, norms, np.array(faces, dtype=np.float32)


@pytest.fixture
def ijb(tmp_path):
    return make_ijb(tmp_path / "data")


def _run(ijb, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return extract_features("ijbc", ijb, tiny_factory, None, out, **kw)


@pytest.mark.parametrize("flip", [False, True])
def test_feature_file_matches_per_image_loop(ijb, tmp_path, flip):
    out = _run(ijb, tmp_path / "feats.npz", flip=flip, batch_size=4, chunk_size=6)
    with np.load(out, allow_pickle=False) as f:
        assert sorted(f.files) == ["faceness_scores", "img_feats", "norms"]
        feats, norms, face = f["img_feats"], f["norms"], f["faceness_scores"]
    ref_feats, ref_norms, ref_face = reference_features(ijb, flip=flip)
    assert feats.dtype == norms.dtype == face.dtype == np.float32
    assert feats.shape == (10, 16) and norms.shape == (10, 1) and face.shape == (10,)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(feats, ref_feats, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
    np.testing.assert_array_equal(face, ref_face)
    assert not (tmp_path / "feats.npz.parts").exists()
    from eval_protocols.features_io import read_features  # the runner reads it as written

    assert read_features(out, expected_rows=10).dim == 16


def test_resume_after_a_kill_skips_finished_chunks(ijb, tmp_path):
    clean = _run(ijb, tmp_path / "clean.npz", batch_size=2, chunk_size=3)

    def die_after_two(chunk):
        if chunk == 1:
            raise KeyboardInterrupt("simulated kill")

    out = tmp_path / "resumed.npz"
    with pytest.raises(KeyboardInterrupt):
        _run(ijb, out, batch_size=2, chunk_size=3, on_chunk_written=die_after_two)
    assert not out.exists()
    assert len(list((tmp_path / "resumed.npz.parts").glob("chunk_*.npy"))) == 2
    computed = []
    _run(ijb, out, batch_size=2, chunk_size=3, on_chunk_written=computed.append)
    assert computed == [2, 3]  # chunks 0 and 1 were not redone
    with np.load(clean) as a, np.load(out) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    computed.clear()
    assert _run(ijb, out, batch_size=2, chunk_size=3, on_chunk_written=computed.append) == out
    assert computed == []  # cached


def test_changed_settings_are_refused_unless_overwrite(ijb, tmp_path):
    out = _run(ijb, tmp_path / "f.npz", chunk_size=4)
    with pytest.raises(InputError, match="--overwrite"):
        _run(ijb, out, chunk_size=4, flip=True)
    _run(ijb, out, chunk_size=4, flip=True, overwrite=True)
    ref, _, _ = reference_features(ijb, flip=True)
    with np.load(out) as f:
        np.testing.assert_allclose(f["img_feats"], ref, rtol=1e-4, atol=1e-5)


def test_unfinished_run_with_other_settings_is_refused(ijb, tmp_path):
    def die(chunk):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        _run(ijb, tmp_path / "f.npz", chunk_size=4, on_chunk_written=die)
    with pytest.raises(InputError, match="different settings.*chunk_size"):
        _run(ijb, tmp_path / "f.npz", chunk_size=5)


def test_dataloader_workers_and_registered_ir18(ijb, tmp_path):
    torch.manual_seed(0)
    out = extract_features("ijbc", ijb, "ir_18", None, tmp_path / "ir.npz", batch_size=4, workers=2,
                           progress=False, chunk_size=5)
    with np.load(out) as f:
        assert f["img_feats"].shape == (10, 512)
        assert np.isfinite(f["img_feats"]).all() and (f["norms"] > 0).all()


def test_worker_errors_keep_their_one_line_message(ijb, tmp_path):
    """An InputError raised inside a DataLoader worker reaches the caller without the worker's traceback."""
    missing = ijb / "IJBC" / "loose_crop" / "7.png"
    missing.unlink()
    with pytest.raises(InputError) as info:
        _run(ijb, tmp_path / "w.npz", workers=2, batch_size=2, chunk_size=4)
    msg = str(info.value)
    assert msg == f"image {missing} listed in the 5pts file is missing"
    assert "Traceback" not in msg and "DataLoader worker" not in msg and info.value.__suppress_context__


def test_other_data_root_with_the_same_image_count_is_not_served_from_the_cache(tmp_path):
    first = make_ijb(tmp_path / "a", seed=0)
    second = make_ijb(tmp_path / "b", seed=1)  # same 10 names, other pixels and landmarks
    out = tmp_path / "f.npz"
    _run(first, out)
    with pytest.raises(InputError, match=r"other data_root.*name_5pts|other .*data_root"):
        _run(second, out)
    _run(second, out, overwrite=True)
    unit, norms, faces = reference_features(second)
    with np.load(out) as f:
        np.testing.assert_allclose(f["img_feats"], unit, atol=1e-5)
        np.testing.assert_allclose(f["faceness_scores"], faces)


def test_edited_5pts_file_is_not_served_from_the_cache(ijb, tmp_path):
    import os

    out = tmp_path / "f.npz"
    _run(ijb, out)
    meta = ijb / "IJBC" / "meta" / "ijbc_name_5pts_score.txt"
    lines = meta.read_text().splitlines()
    lines[0] = lines[0][: lines[0].rindex(" ")] + " 0.1234"  # same count, one faceness edited
    meta.write_text("\n".join(lines) + "\n")
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(InputError, match="other name_5pts"):
        _run(ijb, out)
    _run(ijb, out, overwrite=True)
    with np.load(out) as f:
        assert f["faceness_scores"][0] == pytest.approx(0.1234)


def test_chunk_and_shard_functions():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(0, 4) == []
    for world in (1, 2, 3, 5):
        shards = [shard_chunks(7, r, world) for r in range(world)]
        flat = sorted(c for s in shards for c in s)
        assert flat == list(range(7))  # every chunk exactly once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert batches_for_chunks([(0, 5), (8, 10)], 2) == [[0, 1], [2, 3], [4], [8, 9]]
    with pytest.raises(InputError):
        shard_chunks(3, 2, 2)
    with pytest.raises(InputError):
        batches_for_chunks([(0, 3)], 0)


def test_merge_of_chunks_written_by_two_ranks(tmp_path):
    # each "rank" computes its own chunks into the shared parts folder; then all chunks are merged
    parts = tmp_path / "m.npz.parts"
    parts.mkdir()
    for chunk, (s, e) in enumerate(chunk_bounds(10, 3)):
        np.save(parts / f"chunk_{s:09d}_{e:09d}.npy", np.full((e - s, 4), chunk, np.float32))
    merged = merge_chunks(parts, chunk_bounds(10, 3))
    np.testing.assert_array_equal(merged[:, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    (parts / "chunk_000000003_000000006.npy").unlink()
    with pytest.raises(InputError, match="images 3..5 did not finish"):
        merge_chunks(parts, chunk_bounds(10, 3))


def test_input_errors(tmp_path, ijb):
    with pytest.raises(InputError, match="ijbb_name_5pts_score.txt not found"):
        extract_features("ijbb", ijb, tiny_factory, None, tmp_path / "x.npz", workers=0, progress=False)
    with pytest.raises(InputError, match=r"\.npz or \.safetensors"):
        _run(ijb, tmp_path / "x.pkl")
    with pytest.raises(InputError, match="unknown IJB variant 'lfw'; valid: ijbb, ijbc"):
        extract_features("lfw", ijb, tiny_factory, None, tmp_path / "x.npz", workers=0, progress=False)
    (ijb / "IJBC" / "loose_crop" / "3.png").unlink()
    with pytest.raises(InputError, match="3.png listed in the 5pts file is missing"):
        _run(ijb, tmp_path / "x.npz")
    meta = ijb / "IJBC" / "meta" / "ijbc_name_5pts_score.txt"
    meta.write_text(meta.read_text() + "bad.png 1 2 3\n")
    with pytest.raises(InputError, match=r"(:11|line 11)"):
        _run(ijb, tmp_path / "y.npz")
    with pytest.raises(InputError, match="CUDA is not available|'nope' is not a device"):
        _run(make_ijb(tmp_path / "d2"), tmp_path / "z.npz", device="cuda" if not torch.cuda.is_available() else "nope")


def _rank_main(rank: int, world: int, port: int, root: str, out: str, log: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    done: list[int] = []
    extract_features("ijbc", root, tiny_factory, None, out, batch_size=2, workers=0, progress=False,
                     chunk_size=2, on_chunk_written=done.append)
    with open(f"{log}.{rank}", "w") as fh:
        fh.write(" ".join(map(str, done)))


def test_two_gloo_ranks_share_chunks_and_rank0_merges(ijb, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.npz"
    mp.start_processes(_rank_main, args=(2, port, str(ijb), str(out), str(tmp_path / "log")), nprocs=2,
                       join=True, start_method="spawn")
    assert (tmp_path / "log.0").read_text() == "0 2 4"  # round-robin shards of the 5 chunks
    assert (tmp_path / "log.1").read_text() == "1 3"
    ref, norms, face = reference_features(ijb)
    with np.load(out) as f:
        np.testing.assert_allclose(f["img_feats"], ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(f["norms"], norms, rtol=1e-4)
        np.testing.assert_array_equal(f["faceness_scores"], face)


def test_amp_on_cpu_stays_close_to_float32(ijb, tmp_path):
    full = _run(ijb, tmp_path / "fp32.npz", chunk_size=10)
    half = _run(ijb, tmp_path / "amp.npz", chunk_size=10, amp=True)
    with np.load(full) as a, np.load(half) as b:
        cos = (a["img_feats"] * b["img_feats"]).sum(1)
        assert cos.min() > 0.99
        np.testing.assert_allclose(a["norms"], b["norms"], rtol=0.05)


class NanNet(TinyNet):
    def embed(self, images):
        out = super().embed(images)  # e.g. a float16 overflow
        return out * float("nan")


def test_non_finite_embeddings_are_refused(ijb, tmp_path):
    with pytest.raises(InputError, match=r"NaN/Inf/zero embeddings, first row \d+ \(.*\.png\)"):
        extract_features("ijbc", ijb, lambda checkpoint=None: NanNet().eval(), None, tmp_path / "n.npz",
                         workers=0, progress=False)
    assert not (tmp_path / "n.npz").exists()
