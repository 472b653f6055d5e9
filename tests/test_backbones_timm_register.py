"""IR nets through timm's registry."""

from __future__ import annotations

import pytest
import torch

from facecoreset_plugin import InputError
from facecoreset_plugin.backbones.iresnet import IRNet
from facecoreset_plugin.backbones.timm_register import register_ir_with_timm


def test_timm_create_model_builds_ir_nets(tmp_path):
    import timm

    register_ir_with_timm()
    assert register_ir_with_timm() == []  # second call: already there, nothing replaced
    assert {"ir_18", "ir_101"} <= set(timm.list_models("ir_*"))
    net = timm.create_model("ir_18", embedding_dim=128)
    assert isinstance(net, IRNet) and net.embedding_dim == 128
    torch.save(net.state_dict(), tmp_path / "w.pth")
    loaded = timm.create_model("ir_18", embedding_dim=128, checkpoint_path=str(tmp_path / "w.pth"))
    assert torch.equal(loaded.output_layer[3].weight, net.output_layer[3].weight)
    with pytest.raises(InputError, match="no weights are downloaded"):
        timm.create_model("ir_50", pretrained=True)
