"""AdaFace-layout IR nets: key layout, forward against a functional re-implementation, checkpoints."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from facecoreset_plugin import CheckpointError, InputError, load_backbone
from facecoreset_plugin.backbones.iresnet import STAGE_UNITS, ir_18


class HyperParams(argparse.Namespace):
    """Stands in for the pickled hyper-parameter object of a Lightning checkpoint."""


def _randomize_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _bn(x, sd, key, affine=True):
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"],
                        sd[f"{key}.weight"] if affine else None, sd[f"{key}.bias"] if affine else None,
                        False, 0.0, 1e-5)


def _reference_forward(sd: dict, depth: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IR forward written from REFERENCE.md section 4 with plain functional calls on the state dict."""
    x = F.conv2d(x, sd["input_layer.0.weight"], padding=1)
    x = F.prelu(_bn(x, sd, "input_layer.1"), sd["input_layer.2.weight"])
    unit, in_ch = 0, 64
    for out_ch, count in zip((64, 128, 256, 512), STAGE_UNITS[depth]):
        for k in range(count):
            stride = 2 if k == 0 else 1
            p = f"body.{unit}"
            r = _bn(x, sd, f"{p}.res_layer.0")
            r = F.conv2d(r, sd[f"{p}.res_layer.1.weight"], padding=1)
            r = F.prelu(_bn(r, sd, f"{p}.res_layer.2"), sd[f"{p}.res_layer.3.weight"])
            r = _bn(F.conv2d(r, sd[f"{p}.res_layer.4.weight"], stride=stride, padding=1), sd, f"{p}.res_layer.5")
            if in_ch == out_ch:
                s = x[:, :, ::stride, ::stride]
            else:
                s = _bn(F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride), sd, f"{p}.shortcut_layer.1")
            x = r + s
            in_ch = out_ch
            unit += 1
    x = _bn(x, sd, "output_layer.0").flatten(1)
    x = F.linear(x, sd["output_layer.3.weight"], sd["output_layer.3.bias"])
    x = _bn(x, sd, "output_layer.4", affine=False)
    n = x.norm(dim=1, keepdim=True)
    return x / n, n


def test_ir18_matches_functional_reference():
    torch.manual_seed(0)
    net = ir_18()
    _randomize_bn(net)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        unit, norm = net(x)
        ref_unit, ref_norm = _reference_forward(net.state_dict(), 18, x)
    assert unit.shape == (2, 512) and norm.shape == (2, 1)
    torch.testing.assert_close(unit, ref_unit, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm, ref_norm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("depth", [18, 101])
def test_adaface_key_layout(depth):
    net = load_backbone(f"ir_{depth}")
    sd = net.state_dict()
    units = sum(STAGE_UNITS[depth])
    assert len(net.body) == units
    first_of_stage2 = STAGE_UNITS[depth][0]
    assert sd[f"body.{first_of_stage2}.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)  # MaxPool2d(1, 2): no weights
    assert sd["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert sd["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert "output_layer.4.running_mean" in sd and "output_layer.4.weight" not in sd  # affine=False
    assert net.preprocess.channel_order == "BGR"
    assert not net.training


def _adaface_ckpt(net: torch.nn.Module, path):
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["head.kernel"] = torch.randn(512, 10)
    torch.save({"state_dict": state, "hyper_parameters": HyperParams(arch="ir_18"), "epoch": 3}, path)


def test_adaface_lightning_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    src = ir_18()
    _randomize_bn(src, seed=1)
    _adaface_ckpt(src, tmp_path / "adaface_ir18.ckpt")
    loaded = load_backbone("ir_18", checkpoint=str(tmp_path / "adaface_ir18.ckpt"))
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        for a, b in zip(src.eval()(x), loaded(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plain_state_dict_round_trip(tmp_path):
    torch.manual_seed(2)
    src = ir_18()
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    loaded = ir_18(checkpoint=tmp_path / "plain.pt")
    for k, v in src.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def _mutated_ckpt(tmp_path, mutate):
    state = ir_18().state_dict()
    mutate(state)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    return path


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    path = _mutated_ckpt(tmp_path, lambda s: s.pop("body.3.res_layer.1.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: body\.3\.res_layer\.1\.weight"):
        ir_18(checkpoint=path)
    path = _mutated_ckpt(tmp_path, lambda s: s.__setitem__("body.99.extra", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: body\.99\.extra"):
        ir_18(checkpoint=path)
    path = _mutated_ckpt(tmp_path, lambda s: s.__setitem__("output_layer.3.bias", torch.zeros(256)))
    with pytest.raises(CheckpointError, match=r"output_layer\.3\.bias: checkpoint \(256,\) vs model \(512,\)"):
        ir_18(checkpoint=path)


def test_wrong_depth_checkpoint_names_the_keys(tmp_path):
    torch.save(ir_18().state_dict(), tmp_path / "ir18.pt")
    with pytest.raises(CheckpointError, match="missing keys: body.10"):
        load_backbone("ir_34", checkpoint=str(tmp_path / "ir18.pt"))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ir_18(checkpoint=tmp_path / "nope.ckpt")
    torch.save({"epoch": 1, "optimizer": {}}, tmp_path / "noweights.pt")
    with pytest.raises(CheckpointError, match="no backbone weights"):
        ir_18(checkpoint=tmp_path / "noweights.pt")


def test_config_errors():
    with pytest.raises(InputError, match="unknown option"):
        ir_18(widht=3)
    with pytest.raises(InputError, match="use ir_50"):
        ir_18(depth=50)
