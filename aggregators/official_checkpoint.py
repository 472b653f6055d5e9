"""Reading the official FaceCoresetNet Lightning checkpoint into this project's modules.

The official ``.ckpt`` keeps the aggregator under ``state_dict["aggregate_model.*"]`` next to the
IR-101 backbone (``model.*``, ``template_model.*``) and the margin head (``head.*``); some of the
aggregator's parameters are unused by its forward. The file is read with
:func:`facecoreset_plugin.safe_io.safe_torch_load`, so nothing in it (e.g. a pickled
``hyper_parameters`` object) is ever executed.
"""

from __future__ import annotations

__all__ = ["OFFICIAL_PREFIX", "OFFICIAL_KEY_MAP", "UNUSED_OFFICIAL_KEYS", "official_state_dict", "official_dim",
           "convert_official"]

from typing import Any, Mapping

import torch
from torch import Tensor

from facecoreset_plugin.errors import CheckpointError

OFFICIAL_PREFIX = "aggregate_model."

_MHA = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
_LN = ("weight", "bias")

#: official key (without ``aggregate_model.``) -> this project's ``CoresetAttentionAggregator`` key
OFFICIAL_KEY_MAP: dict[str, str] = {
    "gamma": "gamma",
    **{f"pos_trans_norm.{p}": f"pos_trans_norm.{p}" for p in _LN},
    **{f"decoder_layer1.self_attn1.{p}": f"self_attn.{p}" for p in _MHA},
    **{f"decoder_layer1.multihead_attn1.{p}": f"cross_attn.{p}" for p in _MHA},
    **{f"decoder_layer1.norm1.{p}": f"norm1.{p}" for p in _LN},
    **{f"decoder_layer1.norm2.{p}": f"norm2.{p}" for p in _LN},
}

#: official keys (prefixes) present in the file but not used by the released forward pass
UNUSED_OFFICIAL_KEYS: tuple[str, ...] = (
    "tau", "feature_norm_normalizer", "ur_center", "dist_from_ur_center_norm_size_balance", "quality_measure.",
    "decoder_layer1.self_attn2.", "decoder_layer1.multihead_attn2.", "decoder_layer1.multihead_attn3.",
    "decoder_layer1.norm3.", "decoder_layer1.norm4.",
)


def official_state_dict(obj: Any) -> dict[str, Any] | None:
    """The ``aggregate_model.*`` entries (prefix stripped) of a loaded official checkpoint.

    Accepts a Lightning checkpoint dict (weights under ``"state_dict"``) or a bare state dict.
    Returns None when ``obj`` holds no ``aggregate_model.*`` key at all.
    """
    if not isinstance(obj, Mapping):
        return None
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping):
        return None
    found = {k[len(OFFICIAL_PREFIX):]: v for k, v in state.items()
             if isinstance(k, str) and k.startswith(OFFICIAL_PREFIX)}
    return found or None


def convert_official(obj: Any, source: str, key_map: Mapping[str, str],
                     expected: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """Map an official checkpoint's aggregator weights onto this project's key names.

    Args:
        obj: what ``safe_torch_load`` returned for the file.
        source: the file name, for messages.
        key_map: official key (prefix stripped) -> target key, for the keys the target needs.
        expected: target key -> a tensor of the expected shape (the target's ``state_dict()``).

    Returns:
        The target state dict, or None when ``obj`` is not an official checkpoint.

    Raises:
        CheckpointError: listing every missing, non-tensor or mis-shaped key (official names).
    """
    official = official_state_dict(obj)
    if official is None:
        return None
    missing, misshaped, out = [], [], {}
    for src, dst in key_map.items():
        if src not in official:
            missing.append(OFFICIAL_PREFIX + src)
            continue
        value = official[src]
        want = tuple(expected[dst].shape)
        if not isinstance(value, Tensor):
            misshaped.append(f"{OFFICIAL_PREFIX}{src}: a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != want:
            misshaped.append(f"{OFFICIAL_PREFIX}{src}: checkpoint {tuple(value.shape)} vs model {want}")
        else:
            out[dst] = value.to(expected[dst].dtype)
    if missing or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if misshaped:
            parts.append(f"mis-shaped: {'; '.join(misshaped)}")
        raise CheckpointError(
            f"{source}: FaceCoresetNet checkpoint does not fit: {' | '.join(parts)}. Use the released "
            "FaceCoresetNet .ckpt unmodified, or pass the matching options (dim=..., heads=...) to load()"
        )
    return out


def official_dim(obj: Any) -> int | None:
    """Feature width of an official checkpoint (from ``pos_trans_norm.weight``), if present."""
    official = official_state_dict(obj) or {}
    w = official.get("pos_trans_norm.weight")
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 1 else None
