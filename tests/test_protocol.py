"""ProtocolData assembly: ids mapped to template positions, unknown ids refused with the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_protocols.features_io import ImageFeatures
from eval_protocols.protocol import assemble_protocol_data, build_templates, positions_of
from facecoreset_plugin.errors import InputError


def _feats(m):
    f = np.eye(4, dtype=np.float32)[np.arange(m) % 4]
    return ImageFeatures(f, np.arange(1, m + 1, dtype=np.float32), None)


def test_assemble_groups_by_template_id():
    tids = np.array([50, 7, 50, 900, 7])
    sets = build_templates(_feats(5), tids, np.array([1, 2, 1, 3, 4]))
    data = assemble_protocol_data("x", sets, (np.array([7, 50]), np.array([900, 7]), np.array([0, 1])), "pairs.txt",
                                  {"G1": (np.array([7]), np.array([1]), "g1.csv")}, (np.array([50, 900]),
                                                                                    np.array([1, 2]), "p.csv"))
    assert data.template_ids.tolist() == [7, 50, 900]
    assert data.templates.sizes.tolist() == [2, 2, 1]
    assert data.pair_left.tolist() == [0, 1] and data.pair_right.tolist() == [2, 0]
    assert data.galleries["G1"].positions.tolist() == [0] and data.probes.positions.tolist() == [1, 2]
    # rows of template 7 are images 1 and 4 (norms 2 and 5), in file order
    assert data.templates.norms[:2].tolist() == [2.0, 5.0]
    s = data.summary()
    assert s["images"] == 5 and s["templates"] == 3 and s["genuine_pairs"] == 1 and s["probe_templates"] == 2


def test_unknown_template_ids_named_with_file_and_line():
    ids = torch.tensor([3, 8, 20])
    with pytest.raises(InputError, match=r"pairs\.txt: 2 template id\(s\) have no image .*\(4, 9; first on line 2\)"):
        positions_of(ids, np.array([8, 4, 9, 4]), "pairs.txt")
    with pytest.raises(InputError, match=r"g\.csv: 1 template id\(s\) .*\(99\)"):
        positions_of(ids, np.array([99]), "g.csv")
    assert positions_of(ids, np.array([20, 3]), "x").tolist() == [2, 0]


def test_row_mismatch():
    with pytest.raises(InputError, match="5 feature rows but 4 images"):
        build_templates(_feats(5), np.arange(4), np.arange(4))
