"""insightface arcface_torch IResNet: key layout, forward against a functional re-implementation, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facecoreset_plugin import CheckpointError
from facecoreset_plugin.backbones.insightface_iresnet import ARCFACE_UNITS, iresnet18, iresnet50, iresnet100


def _bn(x, sd, key):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                        sd[f"{key}.bias"], False, 0.0, 1e-5)


def _reference(sd, depth, x):
    """arcface_torch forward from its documented layer order, on the raw state dict."""
    x = F.prelu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"), sd["prelu.weight"])
    for i, count in enumerate(ARCFACE_UNITS[depth], start=1):
        for k in range(count):
            p, stride = f"layer{i}.{k}", (2 if k == 0 else 1)
            o = F.conv2d(_bn(x, sd, f"{p}.bn1"), sd[f"{p}.conv1.weight"], padding=1)
            o = F.prelu(_bn(o, sd, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            o = _bn(F.conv2d(o, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn3")
            ident = x
            if f"{p}.downsample.0.weight" in sd:
                ident = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = o + ident
    x = _bn(x, sd, "bn2").flatten(1)
    return _bn(F.linear(x, sd["fc.weight"], sd["fc.bias"]), sd, "features")


def test_iresnet18_matches_functional_reference():
    torch.manual_seed(0)
    net = iresnet18()
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        unit, norm = net(x)
        ref = _reference(net.state_dict(), 18, x)
    torch.testing.assert_close(unit * norm, ref, rtol=1e-4, atol=1e-3)
    assert net.preprocess.channel_order == "RGB"


@pytest.mark.parametrize("factory,depth", [(iresnet50, 50), (iresnet100, 100)])
def test_arcface_key_layout(factory, depth):
    sd = factory().state_dict()
    assert sd["layer1.0.downsample.0.weight"].shape == (64, 64, 1, 1)  # stride-2 conv even at equal width
    assert f"layer3.{ARCFACE_UNITS[depth][2] - 1}.bn3.running_var" in sd
    assert sd["fc.weight"].shape == (512, 512 * 49) and sd["features.weight"].shape == (512,)
    assert not any(k.startswith(("body.", "input_layer", "output_layer")) for k in sd)


def test_arcface_checkpoint_round_trip_and_adaface_mismatch(tmp_path):
    torch.manual_seed(3)
    src = iresnet18()
    torch.save(src.state_dict(), tmp_path / "backbone.pth")
    dst = iresnet18(checkpoint=tmp_path / "backbone.pth")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(src.eval()(x)[0], dst(x)[0], rtol=0, atol=0)
    from facecoreset_plugin.backbones.iresnet import ir_18

    with pytest.raises(CheckpointError, match="unexpected keys: .*layer1.0.bn1.bias"):
        ir_18(checkpoint=tmp_path / "backbone.pth")
