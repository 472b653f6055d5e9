"""Margin heads against a plain-Python reference of each formula; EMA norm statistics."""

from __future__ import annotations

import math

import pytest
import torch

from aggregators.training.heads import HeadConfig, MarginHead, adaface_logits, arcface_logits, cosface_logits
from facecoreset_plugin.errors import InputError


def _reference(kind, cos, target, q, m, h, s):
    """One logit by the textbook formulas, scalar math only."""
    theta = math.acos(max(-1 + 1e-7, min(1 - 1e-7, cos)))
    if not target:
        return s * math.cos(theta)
    if kind == "arcface":
        return s * math.cos(min(theta + m, math.pi - 1e-3))
    if kind == "cosface":
        return s * (cos - m)
    g = max(-1.0, min(1.0, q * h))
    return s * (math.cos(min(max(theta - m * g, 1e-3), math.pi - 1e-3)) - (m + m * g))


@pytest.mark.parametrize("kind", ["adaface", "arcface", "cosface"])
def test_logits_match_scalar_reference(kind):
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(6, 5, generator=g, dtype=torch.float64) * 2 - 1
    targets = torch.tensor([0, 4, 2, 2, 1, 3])
    quality = torch.tensor([-5.0, -1.0, -0.2, 0.0, 0.7, 9.0], dtype=torch.float64)
    m, h, s = 0.4, 0.333, 30.0
    if kind == "adaface":
        out = adaface_logits(cos, targets, quality, m, h, s)
    elif kind == "arcface":
        out = arcface_logits(cos, targets, m, s)
    else:
        out = cosface_logits(cos, targets, m, s)
    for i in range(6):
        for j in range(5):
            ref = _reference(kind, float(cos[i, j]), j == int(targets[i]), float(quality[i]), m, h, s)
            assert float(out[i, j]) == pytest.approx(ref, abs=1e-9)


def test_adaface_norm_statistics_follow_an_ema_and_only_in_training():
    head = MarginHead(4, 3, HeadConfig(ema_momentum=0.5))
    unit = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    norms = torch.tensor([10.0, 20.0, 30.0, 40.0])
    head.train()(unit, norms, torch.tensor([0, 1, 2, 0]))
    mean, std = 25.0, float(torch.tensor([10.0, 20.0, 30.0, 40.0]).std())
    assert float(head.norm_mean) == pytest.approx(0.5 * 20 + 0.5 * mean)
    assert float(head.norm_std) == pytest.approx(0.5 * 100 + 0.5 * std, rel=1e-5)
    before = head.norm_mean.clone()
    head.eval()(unit, norms, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(head.norm_mean, before)


def test_head_gradient_reaches_descriptors_and_kernel():
    head = MarginHead(8, 5, HeadConfig(kind="arcface", margin=0.5, scale=16))
    unit = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1).requires_grad_()
    loss = torch.nn.functional.cross_entropy(head(unit, torch.ones(3) * 20, torch.tensor([1, 2, 3])), torch.tensor([1, 2, 3]))
    loss.backward()
    assert unit.grad.abs().sum() > 0 and head.kernel.grad.abs().sum() > 0


def test_bad_head_options_are_user_errors():
    with pytest.raises(InputError, match="choose one of"):
        MarginHead(4, 3, HeadConfig(kind="sphereface"))
    with pytest.raises(InputError, match="scale"):
        MarginHead(4, 3, HeadConfig(scale=0))
