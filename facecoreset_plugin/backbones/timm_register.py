"""Optional: make the AdaFace-layout IR nets creatable through timm (``timm.create_model("ir_101")``).

Call :func:`register_ir_with_timm` once; nothing is registered at import time. timm appends the
registered names to this module's ``__all__`` (its registry bookkeeping), which is why this
registration lives in a module of its own. Weights: use ``facecoreset_plugin.load_backbone`` with
``checkpoint=`` (safe loading); ``pretrained=True`` is refused because nothing may be downloaded.
"""

from __future__ import annotations

__all__ = ["register_ir_with_timm"]

from typing import Any, Callable

from ..errors import InputError

#: timm-visible name -> IR depth
IR_NAMES = {"ir_18": 18, "ir_34": 34, "ir_50": 50, "ir_101": 101}
_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _entrypoint(name: str, depth: int) -> Callable[..., Any]:
    def create(pretrained: bool = False, **kwargs: Any) -> Any:
        from .iresnet import _build

        if pretrained:
            raise InputError(
                f"timm.create_model({name!r}, pretrained=True): no weights are downloaded; build it with "
                f"facecoreset_plugin.load_backbone({name!r}, checkpoint=PATH) or pass checkpoint_path="
            )
        for key in _TIMM_ONLY:
            kwargs.pop(key, None)
        net = _build(depth, None, kwargs)
        net.pretrained_cfg = {"architecture": name, "input_size": (3, 112, 112), "mean": (0.5,) * 3,
                              "std": (0.5,) * 3, "classifier": None}
        return net

    create.__name__ = name
    create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"IR-{depth} in AdaFace's layout (facecoreset)."
    return create


def register_ir_with_timm(overwrite: bool = False) -> list[str]:
    """Register ``ir_18`` ... ``ir_101`` in timm's model registry; returns the names registered.

    Args:
        overwrite: replace models of the same name that timm (or another package) already has.
    """
    import timm
    from timm.models import register_model

    done = []
    for name, depth in IR_NAMES.items():
        if timm.is_model(name) and not overwrite:
            continue
        register_model(_entrypoint(name, depth))
        done.append(name)
    return done
