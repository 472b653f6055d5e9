"""IR-18/34/50/101 in AdaFace's module layout (``input_layer`` / ``body`` / ``output_layer``).

State dicts of AdaFace checkpoints load key for key (after stripping ``model.``); the forward
pass follows AdaFace's ``net.py`` layer order, so equal weights give equal outputs.
"""

from __future__ import annotations

__all__ = ["IRConfig", "IRBlock", "IRNet", "STAGE_UNITS", "ir_18", "ir_34", "ir_50", "ir_101"]

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import overlay_config
from ..errors import InputError
from .base import Backbone, Preprocess, load_weights

#: depth -> residual units per stage (64, 128, 256, 512 channels); AdaFace calls IR-101 "100"
STAGE_UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    101: (3, 13, 30, 3),
}
STAGE_CHANNELS = (64, 128, 256, 512)


@dataclass(frozen=True)
class IRConfig:
    """Options of an AdaFace-layout IR net."""

    depth: int = 101  # one of STAGE_UNITS: 18, 34, 50, 101
    embedding_dim: int = 512  # output size of the final Linear / BatchNorm1d
    dropout: float = 0.4  # dropout before the Linear (inactive in eval mode)
    channel_order: str = "BGR"  # AdaFace models were trained on BGR input
    input_size: int = 112  # 112 only (the Linear expects a 7x7 map)


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


class IRBlock(nn.Module):
    """AdaFace's BasicBlockIR: ``res_layer`` (BN, conv3x3, BN, PReLU, conv3x3/stride, BN) + shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class IRNet(Backbone):
    """An IR net in AdaFace's layout; ``forward`` gives ``(x/|x|, |x|)`` like AdaFace's ``Backbone``."""

    def __init__(self, config: IRConfig = IRConfig()) -> None:
        if config.depth not in STAGE_UNITS:
            raise InputError(f"IR depth {config.depth} is not available; choose one of {sorted(STAGE_UNITS)}")
        if config.input_size != 112:
            raise InputError(f"IR nets here take 112x112 input, got input_size={config.input_size}")
        super().__init__(Preprocess(channel_order=config.channel_order), config.embedding_dim)
        self.config = config
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units: list[nn.Module] = []
        in_ch = 64
        for out_ch, count in zip(STAGE_CHANNELS, STAGE_UNITS[config.depth]):
            units.append(IRBlock(in_ch, out_ch, 2))
            units.extend(IRBlock(out_ch, out_ch, 1) for _ in range(count - 1))
            in_ch = out_ch
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(config.dropout),
            _Flatten(),
            nn.Linear(512 * 7 * 7, config.embedding_dim),
            nn.BatchNorm1d(config.embedding_dim, affine=False),
        )
        _init_weights(self)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(images)))


def _build(depth: int, checkpoint: str | Path | None, config: dict[str, Any]) -> IRNet:
    cfg = overlay_config(IRConfig(depth=depth), f"ir_{depth}", **config)
    if cfg.depth != depth:
        raise InputError(f"ir_{depth}: depth={cfg.depth} contradicts the name; use ir_{cfg.depth}")
    net = IRNet(cfg)
    if checkpoint is not None:
        load_weights(net, checkpoint)
    return net.eval()


def ir_18(checkpoint: str | Path | None = None, **config: Any) -> IRNet:
    """IR-18 (AdaFace layout), eval mode; ``checkpoint``: AdaFace ``.ckpt`` or plain state dict."""
    return _build(18, checkpoint, config)


def ir_34(checkpoint: str | Path | None = None, **config: Any) -> IRNet:
    """IR-34 (AdaFace layout), eval mode; see :func:`ir_18`."""
    return _build(34, checkpoint, config)


def ir_50(checkpoint: str | Path | None = None, **config: Any) -> IRNet:
    """IR-50 (AdaFace layout), eval mode; see :func:`ir_18`."""
    return _build(50, checkpoint, config)


def ir_101(checkpoint: str | Path | None = None, **config: Any) -> IRNet:
    """IR-101 (AdaFace's ``IR_101``), eval mode; see :func:`ir_18`."""
    return _build(101, checkpoint, config)
