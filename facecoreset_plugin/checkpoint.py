"""The project's aggregator checkpoint format, safe loading, and strict state-dict checks.

Format (a ``torch.save`` zip file, readable with ``weights_only=True``)::

    {"format": "facecoreset.aggregator", "format_version": 1,
     "aggregator": NAME, "config": {field: value}, "state_dict": {key: tensor},
     "extra": {...}}   # optional plain data: metrics, training step, optimizer state ...
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "read_checkpoint",
    "load_aggregator_checkpoint",
    "check_state_dict",
]

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import CheckpointError
from .safe_io import atomic_write, safe_torch_load

CHECKPOINT_FORMAT = "facecoreset.aggregator"
FORMAT_VERSION = 1


def save_checkpoint(aggregator: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Atomically write ``aggregator`` (name, config, weights) in the project's format."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "aggregator": getattr(aggregator, "name", type(aggregator).__name__),
        "config": dataclasses.asdict(aggregator.config) if dataclasses.is_dataclass(getattr(aggregator, "config", None)) else {},
        "state_dict": {k: v.detach().cpu() for k, v in aggregator.state_dict().items()},
        "extra": dict(extra or {}),
    }
    path = Path(path)
    with atomic_write(path) as fh:
        torch.save(payload, fh)
    return path


def read_checkpoint(path: str | Path) -> Any:
    """Read any torch checkpoint safely (no code runs; unknown objects become placeholders)."""
    obj, _ = safe_torch_load(path)
    return obj


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     ignore_unexpected: bool = False) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = [] if ignore_unexpected else sorted(set(state) - set(own))
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped: {'; '.join(misshaped)}")
        raise CheckpointError(f"{source}: checkpoint does not fit {type(module).__name__}: " + " | ".join(parts))


def load_aggregator_checkpoint(cls: type, path: str | Path, **overrides: Any) -> nn.Module:
    """Build ``cls`` from a project checkpoint, or a foreign one ``cls`` knows how to convert.

    A class can accept other formats by defining the classmethod
    ``convert_foreign_checkpoint(obj, path) -> (config_dict, state_dict) | None``.
    """
    obj = read_checkpoint(path)
    converted = None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        name = getattr(cls, "name", "")
        if name and obj.get("aggregator") != name:
            raise CheckpointError(
                f"{path}: checkpoint holds aggregator {obj.get('aggregator')!r}, not {name!r}; "
                f"load it with load({obj.get('aggregator')!r}, checkpoint=...)"
            )
        converted = (dict(obj.get("config") or {}), obj.get("state_dict") or {})
    elif hasattr(cls, "convert_foreign_checkpoint"):
        converted = cls.convert_foreign_checkpoint(obj, path)
    if converted is None:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not a facecoreset checkpoint for {getattr(cls, 'name', cls.__name__)!r} "
            f"(top-level keys: {keys}); expected 'format': {CHECKPOINT_FORMAT!r}"
        )
    config_dict, state = converted
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    stale = sorted(set(config_dict) - fields)
    if stale:
        raise CheckpointError(f"{path}: config options {stale} are unknown to {cls.__name__}; valid: {sorted(fields)}")
    base = dataclasses.replace(cls.Config(), **config_dict)
    model = cls(base, **overrides)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()
