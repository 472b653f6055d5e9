"""``load`` functions: a registered name (or a class) plus config -> a ready object."""

from __future__ import annotations

__all__ = ["load", "load_aggregator", "load_backbone", "load_protocol"]

from typing import Any

from ._registry import registry
from .errors import InputError


def load(name: str | type, checkpoint: str | None = None, **config: Any) -> Any:
    """A ready aggregator (eval mode) by registered name or class.

    Args:
        name: a name from ``available("aggregators")`` or an ``Aggregator`` subclass.
        checkpoint: weights to load (the project's format, or a foreign one the class reads).
        **config: options overlaid on the aggregator's default ``Config``.
    """
    cls = registry("aggregators").load(name) if isinstance(name, str) else name
    if not isinstance(cls, type):
        raise InputError(f"aggregator plugin {name!r} must be a class, got {type(cls).__name__}")
    if checkpoint is not None:
        return cls.from_checkpoint(checkpoint, **config)
    return cls(**config).eval()


load_aggregator = load


def load_backbone(name: str | Any, checkpoint: str | None = None, **config: Any) -> Any:
    """A backbone module by registered name (``"ir_101"``, ``"timm:resnet50"``) or factory.

    ``"prefix:arg"`` calls the factory registered as ``prefix`` with ``arg`` first (the timm
    model name for ``timm:``).
    """
    if not isinstance(name, str):
        return name(checkpoint=checkpoint, **config)
    reg = registry("backbones")
    if ":" in name:
        prefix, arg = name.split(":", 1)
        return reg.load(prefix)(arg, checkpoint=checkpoint, **config)
    return reg.load(name)(checkpoint=checkpoint, **config)


def load_protocol(name: str | type, **config: Any) -> Any:
    """A protocol runner by registered name (``"ijbc"``, ``"synthetic"``) or class."""
    cls = registry("protocols").load(name) if isinstance(name, str) else name
    return cls(**config)
