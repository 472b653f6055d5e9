"""IJB-B/IJB-C protocol loading from the insightface layout (built here by the synthetic generator)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import facecoreset_plugin as fp
from eval_protocols.ijb import IJBBProtocol, IJBCProtocol
from eval_protocols.synthetic import SyntheticConfig, generate_protocol
from facecoreset_plugin.errors import InputError


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    fc = generate_protocol(root, SyntheticConfig.preset("tiny"), progress=False)
    fb = generate_protocol(root, SyntheticConfig.preset("tiny", layout="ijbb", seed=5), progress=False)
    return root, fc, fb


def test_registered_and_loads_ijbc(trees):
    root, fc, _ = trees
    proto = fp.load_protocol("ijbc")
    assert isinstance(proto, IJBCProtocol)
    data = proto.load(root, fc, progress=False)
    assert data.name == "ijbc" and set(data.galleries) == {"G1", "G2"}
    assert data.templates.num_sets == 200 and data.labels.numel() == 6000
    # every template's rows are the images listed under it
    z = np.load(fc)
    lines = (root / "IJBC/meta/ijbc_face_tid_mid.txt").read_text().split("\n")
    first_tid = int(data.template_ids[0])
    rows = [i for i, ln in enumerate(lines) if ln and int(ln.split()[1]) == first_tid]
    np.testing.assert_array_equal(data.templates.features[: len(rows)].numpy(), z["img_feats"][rows])


def test_ijbb_layout(trees):
    root, _, fb = trees
    data = IJBBProtocol().load(root, fb, progress=False)
    assert set(data.galleries) == {"S1", "S2"}


def test_user_errors(trees, tmp_path):
    root, fc, _ = trees
    with pytest.raises(InputError, match="needs --data-root"):
        IJBCProtocol().load(None, fc)
    with pytest.raises(InputError, match=r"IJBC/meta not found: --data-root"):
        IJBCProtocol().load(tmp_path, fc, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(root / "IJBC", copy / "IJBC")
    pairs = copy / "IJBC/meta/ijbc_template_pair_label.txt"
    pairs.write_text(pairs.read_text() + "123456789 1 0\n")
    with pytest.raises(InputError, match=r"ijbc_template_pair_label\.txt: 1 template id\(s\) .*123456789; first on line 6001"):
        IJBCProtocol().load(copy, fc, progress=False)
    (copy / "IJBC/meta/ijbc_1N_probe_mixed.csv").unlink()
    pairs.write_text("\n".join(pairs.read_text().split("\n")[:-2]) + "\n")
    data = IJBCProtocol().load(copy, fc, progress=False)
    assert data.probes is None and "skipped" in data.info["one_to_n"]
    tid = copy / "IJBC/meta/ijbc_face_tid_mid.txt"
    tid.write_text("\n".join(tid.read_text().split("\n")[:-2]) + "\n")
    with pytest.raises(InputError, match="3000 feature rows but the protocol lists 2999 images"):
        IJBCProtocol().load(copy, fc, progress=False)
