"""Backbone base: preprocessing (channel order, scaling), unit/norm split, flip fusion, weight loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from facecoreset_plugin import CheckpointError, InputError
from facecoreset_plugin.backbones.base import Backbone, Preprocess, load_weights, split_norm


class Tiny(Backbone):
    """A small real backbone: conv, pooling, linear."""

    def __init__(self, order: str = "RGB") -> None:
        super().__init__(Preprocess(channel_order=order), 8)
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.fc = nn.Linear(4 * 4 * 4, 8)

    def embed(self, images):
        return self.fc(nn.functional.adaptive_avg_pool2d(self.conv(images), 4).flatten(1))


def _images(b=3, seed=0):
    return torch.randint(0, 256, (b, 3, 112, 112), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_prepare_channel_order_and_scaling(order):
    net = Tiny(order)
    imgs = _images()
    got = net.prepare(imgs)
    for c in range(3):
        src = c if order == "RGB" else 2 - c
        expected = (imgs[:, src].double() / 255.0 - 0.5) / 0.5
        torch.testing.assert_close(got[:, c].double(), expected, rtol=0, atol=1e-6)


def test_bad_channel_order_and_shape():
    with pytest.raises(InputError, match="channel_order"):
        Preprocess(channel_order="GBR")
    with pytest.raises(InputError, match=r"\[B,3,H,W\]"):
        Tiny().prepare(torch.zeros(3, 112, 112))


def test_split_norm_and_forward():
    raw = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    unit, norm = split_norm(raw)
    torch.testing.assert_close(unit, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    torch.testing.assert_close(norm, torch.tensor([[5.0], [2.0]]))
    net = Tiny().eval()
    x = net.prepare(_images())
    u, n = net(x)
    torch.testing.assert_close(u * n, net.embed(x))


def test_flip_fusion_is_sum_of_unnormalised_embeddings():
    torch.manual_seed(0)
    net = Tiny("BGR").eval()
    imgs = _images(4, seed=3)
    fused = net.embed_images(imgs, flip=True)
    for i in range(4):
        one = net.prepare(imgs[i : i + 1])
        mirrored = net.prepare(imgs[i : i + 1].flip(3))
        expected = net.embed(one) + net.embed(mirrored)
        torch.testing.assert_close(fused[i : i + 1], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fused, 2 * net.embed_images(imgs))  # the mirror really differs


def test_load_weights_prefixes_and_errors(tmp_path):
    src, dst = Tiny(), Tiny()
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ddp.pt")
    load_weights(dst, tmp_path / "ddp.pt")
    assert torch.equal(dst.fc.weight, src.fc.weight)
    with pytest.raises(CheckpointError, match="missing keys: conv.bias, conv.weight, fc.bias, fc.weight"):
        load_weights(Tiny(), {"other.weight": torch.zeros(1)})


def _registered():
    from facecoreset_plugin import available

    return [("timm:resnet18" if n == "timm" else n) for n in available("backbones")]


@pytest.mark.parametrize("name", _registered())
def test_every_registered_backbone_keeps_the_contract(name):
    from facecoreset_plugin import load_backbone

    net = load_backbone(name)
    assert isinstance(net, Backbone) and not net.training
    assert net.preprocess.input_size == 112 and net.preprocess.channel_order in ("RGB", "BGR")
    # random weights of a deep net overflow with the default BatchNorm running statistics:
    # calibrate them on one batch (as trained weights would have), then use eval mode
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        net.train()(net.prepare(_images(4, seed=9)))
    net.eval()
    with torch.no_grad():
        unit, norm = net(net.prepare(_images(2)))
    assert unit.shape == (2, net.embedding_dim) and norm.shape == (2, 1)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))
