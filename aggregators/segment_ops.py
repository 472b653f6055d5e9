"""Segment (ragged) reductions shared by the pooling aggregators."""

from __future__ import annotations

__all__ = ["segment_sum", "segment_mean", "media_fused_sum"]

import torch
from torch import Tensor


def segment_sum(values: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Sum rows ``values [M,D]`` into ``[num_segments, D]`` by ``segments [M]``."""
    out = torch.zeros(num_segments, *values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add_(0, segments, values)


def segment_mean(values: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Mean of rows per segment (empty segments give zeros)."""
    counts = torch.bincount(segments, minlength=num_segments).clamp_min(1).to(values.dtype)
    return segment_sum(values, segments, num_segments) / counts.unsqueeze(-1)


def media_fused_sum(values: Tensor, segments: Tensor, media: Tensor | None, num_segments: int) -> Tensor:
    """Per segment, the sum over its media of the mean of that media's rows.

    Without media ids every row is its own media (a plain segment sum).
    """
    if media is None:
        return segment_sum(values, segments, num_segments)
    pairs = torch.stack([segments, media.to(segments.dtype)], dim=1)
    groups, group_of_row = torch.unique(pairs, dim=0, return_inverse=True)
    media_means = segment_mean(values, group_of_row, len(groups))
    return segment_sum(media_means, groups[:, 0], num_segments)
