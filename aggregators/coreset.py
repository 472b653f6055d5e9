"""FaceCoresetNet (``coreset_attention``) and its FPS-only ablation (``coreset_fps``).

``coreset_attention`` (Shapira & Keller, AAAI 2024): pick a core template of ``K`` raw features
``x = n*f`` by quality-aware farthest-point sampling, add the encoded norms, let the core rows
attend to each other and then to the whole set, add the result to the core rows, average,
normalise. ``coreset_fps``: the mean of the picked raw features, no attention.

Both read the official FaceCoresetNet Lightning checkpoint and the project's own format.
"""

from __future__ import annotations

__all__ = ["CoresetFPSConfig", "CoresetAttentionConfig", "CoresetFPSAggregator", "CoresetAttentionAggregator",
           "coreset_attention_forward"]

import dataclasses
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facecoreset_plugin.aggregator import Aggregator
from facecoreset_plugin.errors import CheckpointError, InputError

from .fps import CoreSelection, select_coreset
from .norm_encoding import sinusoidal_encoding
from .official_checkpoint import OFFICIAL_KEY_MAP, convert_official, official_dim, official_state_dict
from .set_attention import AttentionWeights, attend_folded, fold_queries, folded_cross_attention, self_attention

#: eval: set encodings and attention logits are built this many (set x element) rows at a time,
#: so the temporaries of a huge set stay in cache (results do not depend on it beyond rounding)
KEY_CHUNK_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class CoresetFPSConfig:
    """Options of the core-template selection (shared by both aggregators)."""

    K: int = 3  # core-template size (the paper's best of 6 sizes tried)
    gamma_init: float = 0.01  # initial quality exponent of the FPS distance (learned)
    train_scale: float = 1.0  # training: logits multiplier before the hard Gumbel-softmax
    train_tau: float = 1.0  # training: Gumbel-softmax temperature
    eval_scale: float = 1e4  # eval: logits multiplier (official value; only used with eval_noise)
    eval_tau: float = 1e-10  # eval: temperature (official value; argmax is unaffected by it)
    eval_noise: bool = False  # eval: add Gumbel noise like the official code (non-deterministic)


@dataclasses.dataclass(frozen=True)
class CoresetAttentionConfig(CoresetFPSConfig):
    """Options of FaceCoresetNet's aggregator."""

    dim: int = 512  # feature width D (the backbone's)
    heads: int = 8  # attention heads of both attention layers
    dropout: float = 0.1  # training dropout (attention weights and residual branches)
    layer_norm_eps: float = 1e-5  # eps of the three LayerNorms
    temperature: float = 10000.0  # base of the sinusoidal norm encoding


def _check_fps_config(cfg: CoresetFPSConfig) -> None:
    if not isinstance(cfg.K, int) or cfg.K < 1:
        raise InputError(f"K (core-template size) must be an int >= 1, got {cfg.K!r}")
    if cfg.train_tau <= 0 or cfg.eval_tau <= 0 or cfg.train_scale <= 0 or cfg.eval_scale <= 0:
        raise InputError("train_tau, eval_tau, train_scale and eval_scale must be > 0, got "
                         f"{cfg.train_tau}, {cfg.eval_tau}, {cfg.train_scale}, {cfg.eval_scale}")


class _CoresetBase(Aggregator):
    """Shared wiring: the learned ``gamma``, FPS selection, checkpoint conversion."""

    trainable = True
    Config = CoresetFPSConfig
    _official_keys: Mapping[str, str] = {"gamma": "gamma"}

    def __init__(self, config: Any = None, *, validate_args: bool = True, **overrides: Any) -> None:
        super().__init__(config, validate_args=validate_args, **overrides)
        _check_fps_config(self.config)
        self.gamma = nn.Parameter(torch.tensor(float(self.config.gamma_init)))

    def select(self, x: Tensor, norms: Tensor, mask: Tensor) -> CoreSelection:
        """Core template of every set (training: straight-through Gumbel; eval: argmax)."""
        cfg = self.config
        with torch.autocast(x.device.type, enabled=False):
            if self.training:
                return select_coreset(x, norms, mask, cfg.K, self.gamma, hard_gumbel=True,
                                      scale=cfg.train_scale, tau=cfg.train_tau)
            return select_coreset(x, norms, mask, cfg.K, self.gamma, scale=cfg.eval_scale,
                                  tau=cfg.eval_tau, noise=cfg.eval_noise)

    def param_groups(self, weight_decay: float, gamma_lr: float | None = None) -> list[dict[str, Any]]:
        """AdamW parameter groups: ``gamma`` alone without weight decay (as in the paper).

        Args:
            weight_decay: decay of every other weight.
            gamma_lr: learning rate of the gamma group (the official code's ``--gamma_lr``);
                None: the optimizer's default.
        """
        rest = [p for name, p in self.named_parameters() if name != "gamma"]
        groups: list[dict[str, Any]] = [{"name": "gamma", "params": [self.gamma], "weight_decay": 0.0}]
        if gamma_lr is not None:
            groups[0]["lr"] = float(gamma_lr)
        if rest:
            groups.insert(0, {"name": "weights", "params": rest, "weight_decay": float(weight_decay)})
        return groups

    @classmethod
    def _official_config(cls, obj: Any) -> dict[str, Any]:
        """K from the checkpoint's ``hyper_parameters["coreset_size"]`` when stored as plain data."""
        hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
        size = hparams.get("coreset_size") if isinstance(hparams, Mapping) else None
        return {"K": size} if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else {}

    @classmethod
    def convert_foreign_checkpoint(cls, obj: Any, path: Any) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
        """Read the official FaceCoresetNet Lightning checkpoint (``aggregate_model.*`` keys).

        Unused official keys, the backbone and the head are ignored. K comes from
        ``hyper_parameters["coreset_size"]`` when that is plain data (Lightning stores a dict);
        otherwise the default K=3 of the released model applies (override with ``K=...``).

        Raises:
            CheckpointError: a Lightning checkpoint without aggregator weights, or missing /
                mis-shaped aggregator keys (all listed).
        """
        if official_state_dict(obj) is None:
            if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
                prefixes = sorted({str(k).split(".", 1)[0] + "." for k in obj["state_dict"]})[:10]
                raise CheckpointError(
                    f"{path}: a Lightning checkpoint without FaceCoresetNet aggregator weights "
                    f"('aggregate_model.*'); its state_dict has {prefixes}. Pass the FaceCoresetNet .ckpt"
                )
            return None
        config = cls._official_config(obj)
        expected = cls(dataclasses.replace(cls.Config(), **config)).state_dict()
        state = convert_official(obj, str(path), cls._official_keys, expected)
        return config, state


class CoresetFPSAggregator(_CoresetBase):
    """Ablation of FaceCoresetNet: the mean of the FPS-picked raw features ``n*f``.

    Its only weight is ``gamma``; at its initial value (0.01) it is usable untrained, so no
    checkpoint is needed (an official FaceCoresetNet checkpoint supplies the learned gamma).
    """

    name = "coreset_fps"
    needs_checkpoint = False

    def aggregate(self, features, norms, mask, media, faceness):
        x, norms = _raw_features(features, norms, mask, self.gamma.dtype)
        sel = self.select(x, norms, mask)
        valid = sel.valid.unsqueeze(-1).to(sel.picks.dtype)
        return (sel.picks * valid).sum(1) / valid.sum(1)


class CoresetAttentionAggregator(_CoresetBase):
    """FaceCoresetNet: FPS core template refined by self- and cross-attention (one block).

    The cross-attention uses the folded form (:func:`folded_cross_attention`), exact up to
    rounding and linear in the set size at ``K*heads*D`` per element. Load the released weights
    with ``load("coreset_attention", checkpoint="FaceCoresetNet.ckpt")``.
    """

    name = "coreset_attention"
    needs_checkpoint = True
    Config = CoresetAttentionConfig
    _official_keys = OFFICIAL_KEY_MAP

    def __init__(self, config: Any = None, *, validate_args: bool = True, **overrides: Any) -> None:
        super().__init__(config, validate_args=validate_args, **overrides)
        cfg = self.config
        if cfg.dim <= 0 or cfg.dim % 2 or cfg.heads <= 0 or cfg.dim % cfg.heads:
            raise InputError(f"dim must be even and divisible by heads, got dim={cfg.dim}, heads={cfg.heads}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {cfg.dropout}")
        self.pos_trans_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.self_attn = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)

    @classmethod
    def _official_config(cls, obj: Any) -> dict[str, Any]:
        config = super()._official_config(obj)
        dim = official_dim(obj)
        return config if dim is None else {**config, "dim": dim}

    def aggregate(self, features, norms, mask, media, faceness):
        cfg = self.config
        if features.shape[-1] != cfg.dim:
            raise InputError(f"features have width D={features.shape[-1]}, coreset_attention was built for "
                             f"dim={cfg.dim}; pass dim={features.shape[-1]} or use matching features")
        x, norms = _raw_features(features, norms, mask, self.gamma.dtype)
        sel = self.select(x, norms, mask)
        return coreset_attention_forward(self, x, norms, mask, sel)


def _raw_features(features: Tensor, norms: Tensor, mask: Tensor, dtype: torch.dtype = torch.float32
                  ) -> tuple[Tensor, Tensor]:
    """``x = n*f`` with padding rows and norms zeroed (padding may hold anything).

    Half-precision inputs are computed in the weights' ``dtype`` unless autocast is on.
    """
    if features.dtype != dtype and not torch.is_autocast_enabled(features.device.type):
        features, norms = features.to(dtype), norms.to(dtype)
    norms = norms.masked_fill(~mask, 0.0)
    x = features * norms.unsqueeze(-1)
    return x.masked_fill_(~mask.unsqueeze(-1), 0.0), norms  # padding may hold NaN: 0*NaN is NaN


def coreset_attention_forward(model: CoresetAttentionAggregator, x: Tensor, norms: Tensor, mask: Tensor,
                              sel: CoreSelection) -> Tensor:
    """The attention block of FaceCoresetNet after selection; unnormalised ``[B,D]``.

    ``q = norm1(C + E_C + SA(C + E_C))``; ``q = norm2(C + CA(q, x + E_T, x))``; mean of
    ``C + q`` over the valid core rows.
    """
    cfg = model.config
    training, p = model.training, cfg.dropout
    ln = model.pos_trans_norm
    core = sel.picks
    enc_core = ln(sinusoidal_encoding(torch.linalg.vector_norm(core.float(), dim=-1), cfg.dim, cfg.temperature))
    q = core + enc_core.to(core.dtype)
    sa = self_attention(q, AttentionWeights.of(model.self_attn), cfg.heads, sel.valid, p, training)
    q = model.norm1(q + F.dropout(sa, p, training))
    cross = AttentionWeights.of(model.cross_attn)
    b, n, _ = x.shape
    step = max(64, KEY_CHUNK_ROWS // b)
    if torch.is_grad_enabled() or n <= step:
        keys = x + ln(sinusoidal_encoding(norms, cfg.dim, cfg.temperature)).to(x.dtype)
        ca = folded_cross_attention(q, keys, x, mask, cross, cfg.heads, p, training)
    else:  # no autograd, large sets: keys = x + E_T never exist whole
        folded = fold_queries(q, cross, cfg.heads).to(x.dtype)
        scores = x.new_empty(b, folded.shape[1], n)
        for start in range(0, n, step):
            part = slice(start, min(n, start + step))
            keys = ln(sinusoidal_encoding(norms[:, part], cfg.dim, cfg.temperature)).to(x.dtype).add_(x[:, part])
            scores[:, :, part] = torch.bmm(folded, keys.transpose(1, 2))
        ca = attend_folded(scores, x, mask, cross, cfg.heads, p, training)
    q = model.norm2(core + F.dropout(ca, p, training))
    refined = core + q
    valid = sel.valid.unsqueeze(-1).to(refined.dtype)
    return (refined * valid).sum(1) / valid.sum(1)
