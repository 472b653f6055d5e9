"""The synthetic protocol: exact sizes, IJB-C layout, determinism, world-model properties."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from eval_protocols.ijb_files import meta_paths, read_1n_csv, read_face_tid_mid, read_name_5pts_score, read_template_pairs
from eval_protocols.synthetic import SyntheticConfig, SyntheticProtocol, generate_protocol, make_training_bank
from facecoreset_plugin.errors import InputError

TINY = SyntheticConfig.preset("tiny")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return root, generate_protocol(root, TINY, progress=False)


def test_layout_and_exact_sizes(tiny_root):
    root, feats = tiny_root
    paths = meta_paths(root, "ijbc")
    names, tids, mids = read_face_tid_mid(paths.face_tid_mid)
    names5, lm, face = read_name_5pts_score(paths.name_5pts_score)
    a, b, lab = read_template_pairs(paths.template_pair_label)
    assert names == names5 == [f"{i}.jpg" for i in range(1, TINY.num_images + 1)]
    assert len(np.unique(tids)) == TINY.num_subjects + TINY.num_probe_templates
    assert len(lab) == TINY.num_pairs and int(lab.sum()) == TINY.num_probe_templates
    assert ((face > 0) & (face < 1)).all() and lm.shape == (TINY.num_images, 5, 2)
    # sparse, non-contiguous ids; templates' images are not contiguous lines
    u = np.unique(tids)
    assert u.max() > 2 * len(u) and (np.diff(u) > 1).any()
    assert (np.diff(tids) != 0).sum() > len(u)
    g1, s1 = read_1n_csv(paths.galleries["G1"])
    g2, s2 = read_1n_csv(paths.galleries["G2"])
    pr, sp = read_1n_csv(paths.probe)
    assert len(g1) + len(g2) == TINY.num_subjects and not set(s1) & set(s2)
    assert len(pr) == TINY.num_probe_templates and set(sp) <= set(s1) | set(s2)
    assert set(a) <= set(g1) | set(g2) and set(b) == set(pr)
    pairs = set(zip(a.tolist(), b.tolist()))
    assert len(pairs) == len(a)  # no duplicate pair
    subj = dict(zip(np.r_[g1, g2, pr].tolist(), np.r_[s1, s2, sp].tolist()))
    assert all((subj[x] == subj[y]) == bool(l) for x, y, l in zip(a.tolist(), b.tolist(), lab.tolist()))
    assert feats.is_file()


def test_deterministic_and_cached(tmp_path, tiny_root):
    root, _ = tiny_root
    other = tmp_path / "again"
    generate_protocol(other, TINY, progress=False)
    for rel in ("IJBC/meta/ijbc_face_tid_mid.txt", "IJBC/meta/ijbc_template_pair_label.txt",
                "IJBC/meta/ijbc_1N_probe_mixed.csv"):
        assert (root / rel).read_bytes() == (other / rel).read_bytes()
    f1, f2 = np.load(root / "IJBC/synthetic_features.npz"), np.load(other / "IJBC/synthetic_features.npz")
    np.testing.assert_array_equal(f1["img_feats"], f2["img_feats"])
    mtime = (other / "IJBC/synthetic_features.npz").stat().st_mtime_ns
    generate_protocol(other, TINY, progress=False)  # same config: reused
    assert (other / "IJBC/synthetic_features.npz").stat().st_mtime_ns == mtime
    seed1 = tmp_path / "seed1"
    generate_protocol(seed1, dataclasses.replace(TINY, seed=1), progress=False)
    assert (seed1 / "IJBC/meta/ijbc_template_pair_label.txt").read_bytes() != (
        root / "IJBC/meta/ijbc_template_pair_label.txt").read_bytes()


def test_world_model_properties(tiny_root):
    root, feats = tiny_root
    z = np.load(feats)
    f, n, q = z["img_feats"], z["norms"][:, 0], z["faceness_scores"]
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    assert np.corrcoef(n, q)[0, 1] > 0.5  # norm and faceness both follow quality
    _, tids, mids = read_face_tid_mid(meta_paths(root, "ijbc").face_tid_mid)
    # frames of a clip are near-duplicates: same-media pairs far more similar than same-template pairs
    same_media, same_template = [], []
    for t in np.unique(tids)[:60]:
        rows = np.flatnonzero(tids == t)
        for i in rows:
            for j in rows:
                if i < j:
                    (same_media if mids[i] == mids[j] else same_template).append(float(f[i] @ f[j]))
    assert np.mean(same_media) > np.mean(same_template) + 0.2


def test_training_bank_disjoint_and_same_world(tmp_path):
    path = make_training_bank(tmp_path / "bank.npz", seed=0, num_identities=30, images_per_identity=12,
                              progress=False)
    z = np.load(path)
    assert z["features"].shape == (360, 512) and set(z["labels"].tolist()) == set(range(30))
    for m in np.unique(z["media"])[:50]:  # a media never spans two identities
        assert len(np.unique(z["labels"][z["media"] == m])) == 1
    assert np.corrcoef(z["norms"], z["quality"])[0, 1] > 0.8
    # identities differ from the protocol's subjects (same seed): best cross-mean cosine stays low
    proto = SyntheticProtocol(preset="tiny").load(tmp_path / "p", progress=False)
    t = proto.templates
    seg = t.segment_ids().numpy()
    tf, tn = t.features.numpy(), t.norms.numpy()
    # quality-weighted means: one per protocol template, one per bank identity
    proto_means = np.stack([(tf[seg == s] * tn[seg == s, None] ** 2).sum(0) for s in range(t.num_sets)])
    bf, bn, bl = z["features"], z["norms"], z["labels"]
    bank_means = np.stack([(bf[bl == k] * bn[bl == k, None] ** 2).sum(0) for k in range(30)])
    proto_means /= np.linalg.norm(proto_means, axis=1, keepdims=True)
    bank_means /= np.linalg.norm(bank_means, axis=1, keepdims=True)
    # the same people would score like genuine template pairs; different people stay far lower
    genuine = proto.pair_left[proto.labels == 1], proto.pair_right[proto.labels == 1]
    genuine_scores = (proto_means[genuine[0].numpy()] * proto_means[genuine[1].numpy()]).sum(1)
    cross = bank_means @ proto_means.T
    assert cross.max() < np.median(genuine_scores)
    assert np.percentile(cross, 99) < 0.5


def test_config_validation():
    with pytest.raises(InputError, match="num_images=10 must be >= the number of templates"):
        SyntheticConfig.preset("tiny", num_images=10).validate()
    with pytest.raises(InputError, match="unknown synthetic preset 'huge'"):
        SyntheticConfig.preset("huge")
    with pytest.raises(InputError, match="num_pairs must be between"):
        SyntheticConfig.preset("tiny", num_pairs=10**9).validate()
    assert SyntheticConfig.preset("ijbc").num_pairs == 15_658_489
    assert SyntheticConfig().seed == 0  # defaults untouched by presets


def test_bank_shares_the_low_quality_drift(tmp_path):
    bank = np.load(make_training_bank(tmp_path / "b.npz", seed=3, num_identities=40, images_per_identity=10,
                                      progress=False))
    other = np.load(make_training_bank(tmp_path / "c.npz", seed=4, num_identities=40, images_per_identity=10,
                                       progress=False))
    proto = np.load(generate_protocol(tmp_path / "p", dataclasses.replace(TINY, seed=3), progress=False))

    def low_mean(f, n):
        m = f[n < 10].mean(0)
        return m / np.linalg.norm(m)

    same = low_mean(bank["features"], bank["norms"]) @ low_mean(proto["img_feats"], proto["norms"][:, 0])
    diff = low_mean(other["features"], other["norms"]) @ low_mean(proto["img_feats"], proto["norms"][:, 0])
    assert same > 0.8 > 0.3 > diff


def test_refuses_to_overwrite_a_real_ijb_tree(tmp_path):
    """`facecoreset eval --data-root /data/ijb` without --protocol ijbc must not clobber real files."""
    meta = tmp_path / "IJBC" / "meta"
    meta.mkdir(parents=True)
    real = meta / "ijbc_face_tid_mid.txt"
    real.write_text("1.jpg 1 69544\n")
    with pytest.raises(InputError, match="did not write.*--protocol ijbb/ijbc"):
        generate_protocol(tmp_path, SyntheticConfig.preset("tiny"), progress=False)
    assert real.read_text() == "1.jpg 1 69544\n"
