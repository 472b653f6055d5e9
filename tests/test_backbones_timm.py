"""timm backbones: built without downloads, projection head, checkpoints of both kinds, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from facecoreset_plugin import CheckpointError, InputError, load_backbone


def test_timm_resnet_embeds_112_faces():
    torch.manual_seed(0)
    net = load_backbone("timm:resnet18", embedding_dim=128)
    assert net.embedding_dim == 128 and net.proj is not None and not net.training
    unit, norm = net(torch.randn(2, 3, 112, 112))
    assert unit.shape == (2, 128) and norm.shape == (2, 1)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))


def test_timm_native_width_has_no_projection_and_extra_kwargs_reach_timm():
    net = load_backbone("timm:resnet18", embedding_dim=None, drop_rate=0.2)
    assert net.proj is None and net.embedding_dim == 512
    assert net.model.drop_rate == 0.2


def test_whole_backbone_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    src = load_backbone("timm:resnet18", embedding_dim=64)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "whole.pt")
    dst = load_backbone("timm:resnet18", checkpoint=str(tmp_path / "whole.pt"), embedding_dim=64)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(src(x)[0], dst(x)[0], rtol=0, atol=0)


def test_bare_timm_state_dict_with_classifier_loads(tmp_path):
    import timm

    torch.manual_seed(2)
    bare = timm.create_model("resnet18", pretrained=False)  # with its 1000-class fc
    torch.save(bare.state_dict(), tmp_path / "bare.pth")
    net = load_backbone("timm:resnet18", checkpoint=str(tmp_path / "bare.pth"), embedding_dim=None)
    assert torch.equal(net.model.conv1.weight, bare.conv1.weight)
    with pytest.raises(CheckpointError, match="projection 512->256"):
        load_backbone("timm:resnet18", checkpoint=str(tmp_path / "bare.pth"), embedding_dim=256)


def test_unknown_timm_model_lists_similar_names():
    with pytest.raises(InputError, match="timm has no model 'resnet19'"):
        load_backbone("timm:resnet19")


def test_importing_backbones_does_not_import_timm():
    code = "import facecoreset_plugin.backbones, sys; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
