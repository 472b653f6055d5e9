"""An aggregator shipped by a third-party package, registered through an entry point.

``norm_softmax`` weights each image by ``softmax(norm / temperature)`` over its set, so the
highest-quality images dominate smoothly.
"""

from __future__ import annotations

__all__ = ["NormSoftmaxAggregator", "NormSoftmaxConfig"]

from dataclasses import dataclass

import torch

from facecoreset_plugin import Aggregator


@dataclass(frozen=True)
class NormSoftmaxConfig:
    temperature: float = 5.0  # softmax temperature on the feature norms; larger = closer to mean


class NormSoftmaxAggregator(Aggregator):
    """normalise(sum_i softmax(n / t)_i * f_i) over the real elements of each set."""

    name = "norm_softmax"
    Config = NormSoftmaxConfig

    def aggregate(self, features, norms, mask, media, faceness):
        logits = (norms / self.config.temperature).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        return torch.einsum("bn,bnd->bd", weights, features.masked_fill(~mask.unsqueeze(-1), 0.0))
