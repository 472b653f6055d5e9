"""The project's checkpoint format: round trip, and clear errors for bad files."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from facecoreset_plugin import Aggregator, CheckpointError, InputError, load, save_checkpoint


@dataclass(frozen=True)
class TinyConfig:
    dim: int = 8  # feature width
    scale: float = 1.0  # multiplies the learned weights


class Tiny(Aggregator):
    name = "tiny"
    Config = TinyConfig
    trainable = True

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.w = torch.nn.Parameter(torch.randn(self.config.dim))

    def aggregate(self, features, norms, mask, media, faceness):
        logits = (features @ self.w * self.config.scale).masked_fill(~mask, float("-inf"))
        return torch.einsum("bn,bnd->bd", logits.softmax(1), features * mask[..., None])


def test_roundtrip_restores_config_and_weights(tmp_path):
    model = Tiny(dim=8, scale=2.0)
    path = save_checkpoint(model, tmp_path / "t.ckpt", extra={"step": 3})
    again = load(Tiny, checkpoint=str(path))
    assert again.config == model.config and not again.training
    assert torch.equal(again.w, model.w)
    raw = torch.load(path, weights_only=True)  # readable by the safe torch loader too
    assert raw["extra"] == {"step": 3} and raw["aggregator"] == "tiny"


def test_overrides_apply_on_top_of_the_checkpoint_config(tmp_path):
    path = save_checkpoint(Tiny(scale=2.0), tmp_path / "t.ckpt")
    assert load(Tiny, checkpoint=str(path), scale=3.0).config.scale == 3.0


def test_mis_shaped_and_missing_keys_are_listed(tmp_path):
    path = save_checkpoint(Tiny(dim=8), tmp_path / "t.ckpt")
    raw = torch.load(path, weights_only=True)
    raw["state_dict"] = {"w": torch.zeros(5), "extra_key": torch.zeros(1)}
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra_key.*w: checkpoint \(5,\) vs model \(8,\)"):
        load(Tiny, checkpoint=str(path))
    raw["state_dict"] = {}
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="missing keys: w"):
        load(Tiny, checkpoint=str(path))


def test_wrong_aggregator_and_unknown_format(tmp_path):
    path = save_checkpoint(Tiny(), tmp_path / "t.ckpt")
    raw = torch.load(path, weights_only=True)
    raw["aggregator"] = "other"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="holds aggregator 'other'"):
        load(Tiny, checkpoint=str(path))
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a facecoreset checkpoint"):
        load(Tiny, checkpoint=str(path))


def test_unknown_config_option():
    with pytest.raises(InputError, match=r"unknown option\(s\) 'sclae'; valid options are dim, scale"):
        Tiny(sclae=1.0)
    assert TinyConfig().scale == 1.0  # defaults never mutated
