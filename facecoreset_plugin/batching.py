"""Face sets as ragged data (flat rows + offsets) and padded, size-bucketed batches."""

from __future__ import annotations

__all__ = ["RaggedSets", "FaceSetBatch", "segment_ids_from_offsets", "nonfinite_rows"]

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .errors import InputError


@dataclass
class FaceSetBatch:
    """A padded batch of face sets; padding rows are zero and ``mask`` is False there."""

    features: Tensor  # [B,N,D] unit feature rows
    norms: Tensor  # [B,N] feature norms (the quality signal)
    mask: Tensor  # [B,N] bool, True = real element
    media: Tensor | None = None  # [B,N] int64 media ids (frames of one video share one)
    faceness: Tensor | None = None  # [B,N] detector scores
    index: Tensor | None = None  # [B] positions of these sets in the ragged collection

    def to(self, device: torch.device | str) -> "FaceSetBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return FaceSetBatch(move(self.features), move(self.norms), move(self.mask), move(self.media),
                            move(self.faceness), self.index)

    def inputs(self) -> dict[str, Tensor | None]:
        """Keyword arguments for ``Aggregator.__call__``."""
        return {"features": self.features, "norms": self.norms, "mask": self.mask,
                "media": self.media, "faceness": self.faceness}


def nonfinite_rows(features: Tensor, norms: Tensor, mask: Tensor | None = None) -> Tensor:
    """Indices (``nonzero`` rows) of real elements with NaN/Inf in their feature row or norm.

    Works for flat ``[M,D]``/``[M]`` and padded ``[B,N,D]``/``[B,N]`` input (padding, where
    ``~mask``, may hold anything). One reduction per row first; the exact per-value check runs
    only when that finds something (a row sum can overflow in half precision).
    """
    real = torch.ones_like(norms, dtype=torch.bool) if mask is None else mask
    if bool((torch.isfinite(features.sum(-1)) & torch.isfinite(norms) | ~real).all()):
        return torch.empty(0, norms.dim(), dtype=torch.int64)
    return torch.nonzero((~torch.isfinite(features).all(-1) | ~torch.isfinite(norms)) & real)


def segment_ids_from_offsets(offsets: Tensor) -> Tensor:
    """[M] set index of each flat row, from set offsets [S+1]."""
    sizes = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(sizes), device=offsets.device), sizes)


@dataclass
class RaggedSets:
    """Sets stored flat: rows of set ``s`` are ``offsets[s]:offsets[s+1]``."""

    features: Tensor  # [M,D] unit rows, grouped by set
    norms: Tensor  # [M]
    offsets: Tensor  # [S+1] int64, offsets[0] == 0, non-decreasing
    media: Tensor | None = None  # [M] int64
    faceness: Tensor | None = None  # [M]
    set_ids: Tensor | None = None  # [S] original template ids, if built from ids

    def __post_init__(self) -> None:
        f, n, o = self.features, self.norms, self.offsets
        if f.dim() != 2:
            raise InputError(f"features must be [M,D], got shape {tuple(f.shape)}")
        if n.shape != f.shape[:1]:
            raise InputError(f"norms must be [M]={f.shape[0]}, got shape {tuple(n.shape)}")
        if o.dim() != 1 or len(o) < 1 or int(o[0]) != 0 or int(o[-1]) != f.shape[0]:
            raise InputError(f"offsets must be [S+1] from 0 to M={f.shape[0]}")
        if bool((o[1:] < o[:-1]).any()):
            raise InputError("offsets must be non-decreasing")
        for name in ("media", "faceness"):
            t = getattr(self, name)
            if t is not None and t.shape != f.shape[:1]:
                raise InputError(f"{name} must be [M]={f.shape[0]}, got shape {tuple(t.shape)}")

    @classmethod
    def from_template_ids(cls, features: Tensor, norms: Tensor, template_ids: Tensor,
                          media: Tensor | None = None, faceness: Tensor | None = None) -> "RaggedSets":
        """Group rows by template id (any order, any id values); sets come in ascending id order."""
        template_ids = torch.as_tensor(template_ids)
        if template_ids.shape != features.shape[:1]:
            raise InputError(f"template_ids must be [M]={features.shape[0]}, got {tuple(template_ids.shape)}")
        order = torch.argsort(template_ids, stable=True)
        ids, counts = torch.unique_consecutive(template_ids[order], return_counts=True)
        offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        pick = lambda t: None if t is None else t[order]  # noqa: E731
        return cls(features[order], norms[order], offsets, pick(media), pick(faceness), ids)

    def validate(self) -> None:
        """Check the flat rows once: no empty set, finite features/norms/faceness, norms >= 0.

        Raises:
            InputError: naming the first bad flat rows (rows are grouped by set) or empty sets.
        """
        empty = torch.nonzero(self.sizes == 0).flatten()
        if len(empty):
            raise InputError(f"every set needs at least one element; empty sets at positions {empty[:10].tolist()}")
        bad = nonfinite_rows(self.features, self.norms).flatten()
        if len(bad):
            raise InputError(f"NaN or Inf in features/norms at flat rows {bad[:10].tolist()} "
                             "(rows grouped by set); check the feature file")
        negative = torch.nonzero(self.norms < 0).flatten()
        if len(negative):
            raise InputError(f"norms must be >= 0; negative at flat rows {negative[:10].tolist()}")
        if self.faceness is not None and not bool(torch.isfinite(self.faceness).all()):
            bad = torch.nonzero(~torch.isfinite(self.faceness)).flatten()
            raise InputError(f"NaN or Inf in faceness at flat rows {bad[:10].tolist()}")

    @property
    def num_sets(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def segment_ids(self) -> Tensor:
        return segment_ids_from_offsets(self.offsets)

    def padded(self, set_index: Tensor, dtype: torch.dtype | None = None) -> FaceSetBatch:
        """Pad the sets ``set_index`` (positions, not template ids) into one batch."""
        set_index = torch.as_tensor(set_index, dtype=torch.int64)
        sizes = self.sizes[set_index]
        if bool((sizes == 0).any()):
            raise InputError("cannot pad an empty set")
        batch, width = len(set_index), int(sizes.max()) if len(sizes) else 0
        rows = torch.repeat_interleave(torch.arange(batch), sizes)
        starts = torch.cumsum(sizes, 0) - sizes
        cols = torch.arange(int(sizes.sum())) - torch.repeat_interleave(starts, sizes)
        src = torch.repeat_interleave(self.offsets[set_index], sizes) + cols
        dtype = dtype or self.features.dtype

        def scatter(values: Tensor | None, fill: float | int = 0) -> Tensor | None:
            if values is None:
                return None
            out = torch.full((batch, width, *values.shape[1:]), fill, dtype=values.dtype)
            out[rows, cols] = values[src]
            return out

        mask = torch.zeros(batch, width, dtype=torch.bool)
        mask[rows, cols] = True
        feats = scatter(self.features)
        return FaceSetBatch(feats.to(dtype), scatter(self.norms).to(dtype), mask, scatter(self.media, -1),
                            scatter(self.faceness), set_index)

    def buckets(self, max_elements: int = 65536, max_sets: int = 4096,
                max_padding: float = 1.1) -> Iterator[Tensor]:
        """Yield groups of set positions of similar size, so padding stays small.

        Sets are sorted by size; a bucket grows while ``count * largest <= max_elements`` and
        its padded size stays within ``max_padding`` times its real rows (a single set larger
        than the budget forms its own bucket).
        """
        sizes = self.sizes
        order = torch.argsort(sizes, stable=True).tolist()
        sizes_l = sizes.tolist()
        start = 0
        while start < len(order):
            end, real = start + 1, sizes_l[order[start]]
            while end < len(order) and end - start < max_sets:
                nxt = sizes_l[order[end]]
                padded = (end - start + 1) * nxt
                if padded > max_elements or padded > max_padding * (real + nxt):
                    break
                real += nxt
                end += 1
            yield torch.tensor(order[start:end], dtype=torch.int64)
            start = end
