"""A plain, per-set (batch 1) implementation of the official FaceCoresetNet eval forward.

Written straight from the paper and the released code's eval path, with the official module
names (``decoder_layer1.self_attn1`` ...) and ``torch.nn.MultiheadAttention`` calls: the
independent reference the optimised :class:`~aggregators.coreset.CoresetAttentionAggregator`
is tested and benchmarked against. Slow on purpose; not registered as a plugin.
"""

from __future__ import annotations

__all__ = ["OfficialCoresetReference"]

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .official_checkpoint import OFFICIAL_KEY_MAP


class _DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn1 = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
        self.multihead_attn1 = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)


class OfficialCoresetReference(nn.Module):
    """Official eval-mode FaceCoresetNet aggregator, one set at a time (eval only)."""

    def __init__(self, dim: int = 512, heads: int = 8, k: int = 3) -> None:
        super().__init__()
        self.k, self.dim = k, dim
        self.gamma = nn.Parameter(torch.tensor(0.01))
        self.pos_trans_norm = nn.LayerNorm(dim)
        self.decoder_layer1 = _DecoderLayer(dim, heads)
        self.eval()

    @classmethod
    def from_aggregator(cls, agg: nn.Module) -> "OfficialCoresetReference":
        """A reference holding the same weights as a ``CoresetAttentionAggregator``."""
        cfg = agg.config
        ref = cls(cfg.dim, cfg.heads, cfg.K)
        ours = agg.state_dict()
        ref.load_state_dict({src: ours[dst] for src, dst in OFFICIAL_KEY_MAP.items()}, strict=True)
        return ref.to(next(agg.parameters()).device)

    def encode(self, v: Tensor) -> Tensor:
        """Sinusoidal encoding of scalars ``v [1,T]`` -> ``[1,T,dim]`` (official op order)."""
        i = torch.arange(self.dim, dtype=torch.float32, device=v.device)
        i = 10000 ** (2 * torch.div(i, 2, rounding_mode="floor") / self.dim)
        pos = (v * (2 * math.pi))[:, :, None] / i
        return torch.stack((pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()), dim=3).flatten(2)

    def distance(self, center: Tensor, norms: Tensor, x: Tensor) -> Tensor:
        """``n**gamma * (1 - cos(x, center)) / 2`` -> ``[1,T,1]``."""
        xs = F.normalize(x, p=2.0, dim=-1)
        c = F.normalize(center, p=2.0, dim=-1)
        dist = (1 - torch.bmm(xs, c.transpose(1, 2))) / 2
        return torch.pow(norms, self.gamma) * dist

    def fps(self, x: Tensor, norms: Tensor) -> Tensor:
        """Pick ``min(k, T)`` rows of ``x [1,T,D]``: largest norm first, then farthest."""
        k = min(self.k, x.shape[1])
        n = norms.unsqueeze(-1)  # [1,T,1]
        idx = int(torch.argmax(n[0, :, 0]))
        core = x[:, idx:idx + 1]
        dist = self.distance(core, n, x)
        for _ in range(k - 1):
            idx = int(torch.argmax(dist[0, :, 0]))
            new = x[:, idx:idx + 1]
            dist = torch.min(dist, self.distance(new, n, x))
            core = torch.cat([core, new], dim=1)
        return core

    @torch.no_grad()
    def forward(self, features: Tensor, norms: Tensor) -> tuple[Tensor, Tensor]:
        """One set: unit ``features [1,T,D]``, ``norms [1,T]`` -> (unit descriptor [1,D], norm [1])."""
        x = norms.unsqueeze(-1).repeat(1, 1, features.shape[-1]) * features
        core = self.fps(x, norms)
        enc_set = self.pos_trans_norm(self.encode(norms))
        enc_core = self.pos_trans_norm(self.encode(core.norm(dim=2)))
        layer = self.decoder_layer1
        q = core + enc_core
        q = layer.norm1(q + layer.self_attn1(q, q, q, need_weights=False)[0])
        q = layer.norm2(core + layer.multihead_attn1(q, x + enc_set, x, need_weights=False)[0])
        agg = torch.mean(core + q, dim=1)
        norm = agg.norm(dim=-1)
        return agg / norm.unsqueeze(-1), norm
