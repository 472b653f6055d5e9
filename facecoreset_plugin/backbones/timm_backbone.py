"""Any timm model as a face backbone: ``load_backbone("timm:resnet50", embedding_dim=512)``.

The timm model is built with ``pretrained=False`` (nothing is downloaded) and without its
classifier; its pooled features go through a projection (Linear + BatchNorm1d) when their size
differs from ``embedding_dim``. Weights come from ``checkpoint``: a state dict of this whole
module (``model.*``, ``proj.*``) or of the bare timm model (then no projection may be needed).
"""

from __future__ import annotations

__all__ = ["TimmConfig", "TimmBackbone", "timm_backbone"]

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..safe_io import safe_torch_load
from .base import Backbone, Preprocess, _find_state_dict, load_weights


@dataclass(frozen=True)
class TimmConfig:
    """Options of a timm backbone (other keyword options go to ``timm.create_model``)."""

    embedding_dim: int | None = 512  # output size; None keeps the timm model's num_features
    channel_order: str = "RGB"  # channel order the weights were trained with
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel mean after scaling to [0, 1]
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel std
    input_size: int = 112  # side of the aligned input


class TimmBackbone(Backbone):
    """A timm feature extractor (``self.model``) plus an optional projection (``self.proj``)."""

    def __init__(self, model: nn.Module, config: TimmConfig = TimmConfig()) -> None:
        features = int(getattr(model, "num_features"))
        dim = features if config.embedding_dim is None else int(config.embedding_dim)
        preprocess = Preprocess(config.channel_order, tuple(config.mean), tuple(config.std), config.input_size)
        super().__init__(preprocess, dim)
        self.config = config
        self.model = model
        self.proj: nn.Module | None = None
        if dim != features:
            self.proj = nn.Sequential(nn.Linear(features, dim, bias=False), nn.BatchNorm1d(dim))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.model(images)
        if x.ndim != 2:
            raise InputError(f"timm model returned shape {tuple(x.shape)}; expected pooled features [B,C]")
        return x if self.proj is None else self.proj(x)


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier", ()) if isinstance(cfg, Mapping) else ()
    return (names,) if isinstance(names, str) else tuple(names)


def timm_backbone(name: str, checkpoint: str | Path | None = None, **config: Any) -> TimmBackbone:
    """Build the timm model ``name`` as a backbone (eval mode, random init unless ``checkpoint``).

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``"resnet50"``.
        checkpoint: weights (see the module docstring); read without running code.
        **config: :class:`TimmConfig` fields; any other option goes to ``timm.create_model``
            (e.g. ``img_size=112`` for vision transformers).
    """
    import timm

    fields = {f.name for f in dataclasses.fields(TimmConfig)}
    cfg = dataclasses.replace(TimmConfig(), **{k: v for k, v in config.items() if k in fields})
    timm_kwargs = {k: v for k, v in config.items() if k not in fields}
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:10]
        raise InputError(f"timm has no model {name!r}; similar names: {close or 'none'} (see timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
    except TypeError as exc:
        raise InputError(f"timm:{name}: bad option for timm.create_model ({exc})") from exc
    net = TimmBackbone(model, cfg)
    if checkpoint is not None:
        obj = safe_torch_load(checkpoint)[0]
        state = {str(k): v for k, v in _find_state_dict(obj, str(checkpoint)).items()}
        if set(state) & set(net.state_dict()):
            load_weights(net, state)
        else:
            if net.proj is not None:
                raise CheckpointError(
                    f"{checkpoint}: holds bare timm weights but timm:{name} adds a projection "
                    f"{net.model.num_features}->{net.embedding_dim} that they lack; pass "
                    f"embedding_dim={net.model.num_features} (or None), or a checkpoint of the whole backbone"
                )
            heads = _classifier_keys(model)
            state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
            load_weights(net.model, state)
    return net.eval()
