"""insightface ``arcface_torch`` IResNet-18/34/50/100 (module names ``conv1`` ... ``layer4``, ``fc``, ``features``).

State dicts saved by ``arcface_torch`` (``model.pt`` / ``backbone.pth``) load key for key; the
network returns the unnormalised ``features`` output, split into unit rows and norms by the base.
These models were trained on RGB input scaled ``(x/255 - 0.5)/0.5``.
"""

from __future__ import annotations

__all__ = ["ArcfaceConfig", "IBasicBlock", "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100"]

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import overlay_config
from ..errors import InputError
from .base import Backbone, Preprocess, load_weights

#: depth -> blocks per stage
ARCFACE_UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}


@dataclass(frozen=True)
class ArcfaceConfig:
    """Options of an arcface_torch IResNet."""

    depth: int = 100  # one of ARCFACE_UNITS: 18, 34, 50, 100
    embedding_dim: int = 512  # ``num_features``: size of ``fc`` / ``features``
    dropout: float = 0.0  # dropout before ``fc`` (arcface_torch default 0)
    channel_order: str = "RGB"  # insightface models take RGB


class IBasicBlock(nn.Module):
    """bn1, conv1, bn2, prelu, conv2 (stride), bn3, plus ``downsample`` (conv1x1 + BN) when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(Backbone):
    """arcface_torch's IResNet with the same attribute names (so its checkpoints load as they are)."""

    def __init__(self, config: ArcfaceConfig = ArcfaceConfig()) -> None:
        if config.depth not in ARCFACE_UNITS:
            raise InputError(f"iresnet depth {config.depth} is not available; choose one of {sorted(ARCFACE_UNITS)}")
        super().__init__(Preprocess(channel_order=config.channel_order), config.embedding_dim)
        self.config = config
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        in_ch = 64
        for i, (out_ch, count) in enumerate(zip((64, 128, 256, 512), ARCFACE_UNITS[config.depth]), start=1):
            blocks = [IBasicBlock(in_ch, out_ch, 2)] + [IBasicBlock(out_ch, out_ch, 1) for _ in range(count - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            in_ch = out_ch
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=config.dropout)
        self.fc = nn.Linear(512 * 7 * 7, config.embedding_dim)
        self.features = nn.BatchNorm1d(config.embedding_dim, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(images)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _build(depth: int, checkpoint: str | Path | None, config: dict[str, Any]) -> IResNet:
    cfg = overlay_config(ArcfaceConfig(depth=depth), f"iresnet{depth}", **config)
    net = IResNet(cfg)
    if checkpoint is not None:
        load_weights(net, checkpoint)
    return net.eval()


def iresnet18(checkpoint: str | Path | None = None, **config: Any) -> IResNet:
    """insightface IResNet-18, eval mode; ``checkpoint``: an arcface_torch state dict."""
    return _build(18, checkpoint, config)


def iresnet34(checkpoint: str | Path | None = None, **config: Any) -> IResNet:
    """insightface IResNet-34, eval mode; see :func:`iresnet18`."""
    return _build(34, checkpoint, config)


def iresnet50(checkpoint: str | Path | None = None, **config: Any) -> IResNet:
    """insightface IResNet-50, eval mode; see :func:`iresnet18`."""
    return _build(50, checkpoint, config)


def iresnet100(checkpoint: str | Path | None = None, **config: Any) -> IResNet:
    """insightface IResNet-100 (ArcFace / glint360k releases), eval mode; see :func:`iresnet18`."""
    return _build(100, checkpoint, config)
