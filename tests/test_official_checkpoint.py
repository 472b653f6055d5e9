"""Mapping the official FaceCoresetNet keys onto ours; missing and mis-shaped keys listed."""

from __future__ import annotations

import pytest
import torch

from aggregators.coreset import CoresetAttentionAggregator
from aggregators.official_checkpoint import (
    OFFICIAL_KEY_MAP,
    UNUSED_OFFICIAL_KEYS,
    convert_official,
    official_dim,
    official_state_dict,
)
from facecoreset_plugin import CheckpointError


def _official(dim=16, heads=2):
    model = CoresetAttentionAggregator(dim=dim, heads=heads)
    ours = model.state_dict()
    state = {f"aggregate_model.{src}": torch.randn_like(ours[dst]) for src, dst in OFFICIAL_KEY_MAP.items()}
    state["aggregate_model.ur_center"] = torch.randn(dim)
    state["aggregate_model.decoder_layer1.norm3.weight"] = torch.randn(dim)
    state["model.input_layer.0.weight"] = torch.randn(4, 3, 3, 3)
    state["head.kernel"] = torch.randn(dim, 5)
    return {"state_dict": state, "epoch": 1}, ours


def test_every_used_key_is_mapped_and_nothing_else():
    obj, ours = _official()
    out = convert_official(obj, "x.ckpt", OFFICIAL_KEY_MAP, ours)
    assert set(out) == set(ours)
    for src, dst in OFFICIAL_KEY_MAP.items():
        assert torch.equal(out[dst], obj["state_dict"][f"aggregate_model.{src}"])
    assert not any(src.startswith(UNUSED_OFFICIAL_KEYS) for src in OFFICIAL_KEY_MAP)


def test_bare_state_dict_and_dim_are_recognised():
    obj, _ = _official(dim=16)
    assert official_state_dict(obj["state_dict"]) is not None
    assert official_dim(obj) == 16
    assert official_state_dict({"state_dict": {"model.w": torch.ones(1)}}) is None
    assert official_state_dict([1, 2]) is None


def test_missing_and_misshaped_keys_are_all_listed():
    obj, ours = _official()
    del obj["state_dict"]["aggregate_model.decoder_layer1.norm2.bias"]
    del obj["state_dict"]["aggregate_model.gamma"]
    obj["state_dict"]["aggregate_model.decoder_layer1.multihead_attn1.in_proj_weight"] = torch.zeros(3, 3)
    obj["state_dict"]["aggregate_model.pos_trans_norm.bias"] = "not a tensor"
    with pytest.raises(CheckpointError) as err:
        convert_official(obj, "bad.ckpt", OFFICIAL_KEY_MAP, ours)
    msg = str(err.value)
    assert "bad.ckpt" in msg
    for key in ("aggregate_model.decoder_layer1.norm2.bias", "aggregate_model.gamma",
                "aggregate_model.decoder_layer1.multihead_attn1.in_proj_weight: checkpoint (3, 3) vs model (48, 16)",
                "aggregate_model.pos_trans_norm.bias: a str"):
        assert key in msg
