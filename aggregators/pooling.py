"""Pooling baselines: mean, quality-weighted (CAFace/FaceCoresetNet "average pooling"), and
insightface's media fusion. Each works on padded batches and directly on ragged sets."""

from __future__ import annotations

__all__ = ["MeanAggregator", "QualityWeightedAggregator", "MediaFusionAggregator"]

import torch
from torch import Tensor

from facecoreset_plugin.aggregator import Aggregator, _normalize
from facecoreset_plugin.batching import RaggedSets

from .segment_ops import media_fused_sum, segment_mean, segment_sum


class _PoolingAggregator(Aggregator):
    """Shared wiring: flatten the real elements, reduce by segment, normalise."""

    def reduce(self, features: Tensor, norms: Tensor, segments: Tensor, num_segments: int,
               media: Tensor | None, faceness: Tensor | None) -> Tensor:
        raise NotImplementedError

    def aggregate(self, features, norms, mask, media, faceness):
        rows = torch.nonzero(mask, as_tuple=True)
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return self.reduce(features[rows], norms[rows], rows[0], features.shape[0], pick(media), pick(faceness))

    @torch.no_grad()
    def aggregate_ragged(self, sets: RaggedSets, max_elements: int = 65536, device=None, workers=None):
        """Segment reduction over the flat rows (no padding, no buckets: ``workers`` unused)."""
        if self.validate_args:
            sets.validate()
        device = torch.device(device) if device is not None else torch.device("cpu")
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        raw = self.reduce(sets.features.to(device), sets.norms.to(device), sets.segment_ids().to(device),
                          sets.num_sets, move(sets.media), move(sets.faceness))
        unit, norm = _normalize(raw)
        return unit.float().cpu(), norm.float().cpu()


class MeanAggregator(_PoolingAggregator):
    """normalise(mean of the unit features): every image counts the same."""

    name = "mean"

    def reduce(self, features, norms, segments, num_segments, media, faceness):
        return segment_mean(features, segments, num_segments)


class QualityWeightedAggregator(_PoolingAggregator):
    """normalise(sum of n·f): the feature norm as quality weight (the papers' average pooling)."""

    name = "quality_weighted"

    def reduce(self, features, norms, segments, num_segments, media, faceness):
        return segment_sum(features * norms.unsqueeze(-1), segments, num_segments)


class MediaFusionAggregator(_PoolingAggregator):
    """insightface's default template fusion: per media the mean of n·faceness·f, summed over
    the template's media, normalised. Without media ids every image is its own media; without
    faceness it is 1."""

    name = "media_fusion"
    uses_media = True

    def reduce(self, features, norms, segments, num_segments, media, faceness):
        weight = norms if faceness is None else norms * faceness.to(norms.dtype)
        return media_fused_sum(features * weight.unsqueeze(-1), segments, media, num_segments)
