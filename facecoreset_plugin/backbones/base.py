"""The ``Backbone`` base module: images in, (unit embeddings, norms) out, preprocessing attached."""

from __future__ import annotations

__all__ = ["Preprocess", "Backbone", "load_weights", "split_norm"]

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..checkpoint import check_state_dict
from ..errors import CheckpointError, InputError
from ..safe_io import safe_torch_load


@dataclass(frozen=True)
class Preprocess:
    """How a backbone wants its aligned 112x112 images (applied by :meth:`Backbone.prepare`)."""

    channel_order: str = "RGB"  # "RGB" (insightface, timm) or "BGR" (AdaFace)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # subtracted after scaling to [0, 1]
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # divided after the mean
    input_size: int = 112  # side of the square input in pixels

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")


def split_norm(raw: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Split raw embeddings ``[B,D]`` into unit rows ``[B,D]`` and their L2 norms ``[B,1]``."""
    norm = torch.linalg.vector_norm(raw, dim=1, keepdim=True)
    return raw / norm.clamp_min(eps), norm


class Backbone(nn.Module):
    """A face embedding network; subclasses implement :meth:`embed`.

    ``forward(images [B,3,112,112])`` takes images already prepared by :meth:`prepare` and
    returns ``(unit embeddings [B,D], norms [B,1])`` (AdaFace's convention).

    Attributes:
        preprocess: the channel order and scaling this network was trained with.
        embedding_dim: D.
    """

    preprocess: Preprocess
    embedding_dim: int

    def __init__(self, preprocess: Preprocess, embedding_dim: int) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.embedding_dim = int(embedding_dim)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) embeddings ``[B,D]`` of prepared images."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_norm(self.embed(images).float())

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """RGB images ``[B,3,H,W]`` (uint8 0..255, or float 0..255) -> this network's input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"expected RGB images [B,3,H,W], got shape {tuple(images.shape)}")
        p = self.preprocess
        x = images.float()
        if p.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(p.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(p.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x / 255.0 - mean) / std

    def embed_images(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Raw embeddings of RGB uint8 images; with ``flip`` the sum of image and mirror embeddings."""
        x = self.prepare(images)
        if flip:
            both = self.embed(torch.cat([x, x.flip(3)], dim=0)).float()
            return both[: len(x)] + both[len(x):]
        return self.embed(x).float()


def _find_state_dict(obj: Any, source: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"{source}: no backbone weights found (top-level: {keys}); expected a state dict of "
        "tensors or a dict with a 'state_dict' entry (AdaFace / Lightning)"
    )


def load_weights(module: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor],
                 prefixes: tuple[str, ...] = ("model.", "module.", "backbone.")) -> nn.Module:
    """Load ``checkpoint`` into ``module`` strictly, reading files without running code.

    Accepts a plain state dict, or a dict whose ``state_dict`` holds the weights under a prefix
    (AdaFace / Lightning: ``model.``; DDP: ``module.``). When the keys carry one of
    ``prefixes`` only the keys under that prefix are taken (``head.*`` and the like are ignored).

    Raises:
        CheckpointError: unreadable file, or missing / unexpected / mis-shaped keys (listed).
    """
    source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "state dict"
    obj = checkpoint if isinstance(checkpoint, Mapping) else safe_torch_load(checkpoint)[0]
    state = {str(k): v for k, v in _find_state_dict(obj, source).items()}
    own = set(module.state_dict())
    if not (set(state) & own):
        for prefix in prefixes:
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(sub) & own:
                state = sub
                break
    check_state_dict(module, state, source)
    module.load_state_dict(state, strict=True)
    return module

