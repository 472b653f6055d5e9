"""Margin classification heads on aggregated descriptors: AdaFace, ArcFace, CosFace.

Functional core (``adaface_logits``, ``arcface_logits``, ``cosface_logits``: pure tensor
functions of cosines) plus one module, :class:`MarginHead`, that owns the class kernel and
AdaFace's running norm statistics.
"""

from __future__ import annotations

__all__ = ["HeadConfig", "MarginHead", "HEADS", "adaface_logits", "arcface_logits", "cosface_logits"]

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecoreset_plugin.errors import InputError

HEADS = ("adaface", "arcface", "cosface")
_EPS = 1e-3


@dataclass(frozen=True)
class HeadConfig:
    """Margin head options (the defaults are the FaceCoresetNet paper's AdaFace setting)."""

    kind: str = "adaface"  # one of HEADS
    margin: float = 0.8  # m: AdaFace/ArcFace angular margin (radians) or CosFace cosine margin
    h: float = 0.333  # AdaFace: how strongly the feature-norm quality scales the margin
    scale: float = 48.0  # s: logit scale
    ema_momentum: float = 0.01  # AdaFace: update rate of the running norm mean/std

    def validate(self) -> "HeadConfig":
        if self.kind not in HEADS:
            raise InputError(f"unknown margin head {self.kind!r}; choose one of {', '.join(HEADS)}")
        if self.scale <= 0 or self.margin < 0 or not 0 < self.ema_momentum <= 1:
            raise InputError(f"head needs scale > 0, margin >= 0, 0 < ema_momentum <= 1; got {self}")
        return self


def _target_mask(cosine: Tensor, targets: Tensor) -> Tensor:
    return F.one_hot(targets, cosine.shape[1]).to(torch.bool)


def arcface_logits(cosine: Tensor, targets: Tensor, margin: float, scale: float) -> Tensor:
    """s * cos(theta + m) for the target class, s * cos(theta) elsewhere."""
    theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
    target = _target_mask(cosine, targets)
    shifted = torch.where(target, (theta + margin).clamp(max=math.pi - _EPS), theta)
    return scale * torch.cos(shifted)


def cosface_logits(cosine: Tensor, targets: Tensor, margin: float, scale: float) -> Tensor:
    """s * (cos(theta) - m) for the target class, s * cos(theta) elsewhere."""
    return scale * (cosine - margin * _target_mask(cosine, targets).to(cosine.dtype))


def adaface_logits(cosine: Tensor, targets: Tensor, quality: Tensor, margin: float, h: float,
                   scale: float) -> Tensor:
    """AdaFace: angular and additive margins set by the normalised quality ``quality [B]``.

    ``quality`` is the batch-standardised descriptor norm (treated as a constant); with
    ``q = clip(h * quality, -1, 1)`` the target logit is ``s * (cos(theta - m*q) - (m + m*q))``
    (high quality: additive margin, low quality: angular margin).
    """
    q = (quality.detach() * h).clamp(-1, 1).unsqueeze(1)
    target = _target_mask(cosine, targets)
    theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
    theta = torch.where(target, (theta - margin * q).clamp(_EPS, math.pi - _EPS), theta)
    cos_m = torch.cos(theta) - torch.where(target, margin + margin * q, torch.zeros_like(q))
    return scale * cos_m


class MarginHead(nn.Module):
    """A class kernel [D,C] plus a margin rule; ``forward`` returns logits [B,C].

    Args:
        dim: descriptor width D.
        num_classes: number of training identities C.
        config: head options.
    """

    def __init__(self, dim: int, num_classes: int, config: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.config = config.validate()
        self.kernel = nn.Parameter(torch.empty(dim, num_classes).uniform_(-1, 1) * (1 / dim) ** 0.5)
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))

    @torch.no_grad()
    def _update_norm_stats(self, norms: Tensor) -> None:
        """EMA of the batch mean/std of the descriptor norms (averaged over DDP ranks)."""
        stats = torch.stack([norms.sum(), (norms * norms).sum(), torch.tensor(float(norms.numel()), device=norms.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        mean = stats[0] / stats[2]
        var = (stats[1] - stats[2] * mean * mean) / (stats[2] - 1).clamp_min(1)
        std = var.clamp_min(0).sqrt()
        a = self.config.ema_momentum
        self.norm_mean.mul_(1 - a).add_(a * mean)
        self.norm_std.mul_(1 - a).add_(a * std)

    def forward(self, unit: Tensor, norms: Tensor, targets: Tensor) -> Tensor:
        """Logits [B,C] of unit descriptors ``unit [B,D]`` with norms ``norms [B]``."""
        cosine = F.normalize(unit, dim=-1) @ F.normalize(self.kernel, dim=0)
        cfg = self.config
        if cfg.kind == "arcface":
            return arcface_logits(cosine, targets, cfg.margin, cfg.scale)
        if cfg.kind == "cosface":
            return cosface_logits(cosine, targets, cfg.margin, cfg.scale)
        safe = norms.detach().float().clamp(0.001, 100)
        if self.training:
            self._update_norm_stats(safe)
        quality = (safe - self.norm_mean) / (self.norm_std + _EPS)
        return adaface_logits(cosine, targets, quality.to(cosine.dtype), cfg.margin, cfg.h, cfg.scale)
