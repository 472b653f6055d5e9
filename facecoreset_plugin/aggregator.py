"""The ``Aggregator`` interface: a face set batch in, unit template descriptors out."""

from __future__ import annotations

__all__ = ["Aggregator", "EmptyConfig", "validate_set_batch"]

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .batching import RaggedSets, nonfinite_rows
from .config import overlay_config
from .errors import InputError

_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class EmptyConfig:
    """Config of an aggregator without options."""


def validate_set_batch(features: Tensor, norms: Tensor, mask: Tensor | None, media: Tensor | None,
                       faceness: Tensor | None, expected_dim: int | None = None) -> Tensor:
    """Check a padded set batch and return its mask (all True when ``mask`` is None).

    Raises:
        InputError: wrong rank or width, mismatched shapes, NaN/Inf in real elements, or a set
            with no real element.
    """
    if not isinstance(features, Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise InputError(f"features must be a [B,N,D] tensor, got {shape}; add a batch dim with features[None]")
    b, n, d = features.shape
    if expected_dim is not None and d != expected_dim:
        raise InputError(f"features have width D={d}, this aggregator expects D={expected_dim}")
    if not isinstance(norms, Tensor) or tuple(norms.shape) != (b, n):
        got = tuple(norms.shape) if isinstance(norms, Tensor) else type(norms).__name__
        hint = " (squeeze the trailing 1)" if isinstance(norms, Tensor) and tuple(norms.shape) == (b, n, 1) else ""
        raise InputError(f"norms must be [B,N]=({b}, {n}) like features, got {got}{hint}")
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=features.device)
    elif tuple(mask.shape) != (b, n) or mask.dtype != torch.bool:
        raise InputError(f"mask must be a bool [B,N]=({b}, {n}) tensor, got {mask.dtype} {tuple(mask.shape)}")
    for name, t in (("media", media), ("faceness", faceness)):
        if t is not None and tuple(t.shape) != (b, n):
            raise InputError(f"{name} must be [B,N]=({b}, {n}), got {tuple(t.shape)}")
    if n == 0 or not bool(mask.any(dim=1).all()):
        empty = [] if n == 0 else torch.nonzero(~mask.any(dim=1)).flatten().tolist()[:10]
        raise InputError(f"every set needs at least one real element; empty sets at batch rows {empty or 'all'}")
    bad = nonfinite_rows(features, norms, mask)
    if len(bad):
        raise InputError(f"NaN or Inf in features/norms at (set, element) {bad[:10].tolist()}")
    if bool(((norms < 0) & mask).any()):
        raise InputError(f"norms must be >= 0; negative at (set, element) {torch.nonzero((norms < 0) & mask)[:10].tolist()}")
    if faceness is not None and not bool((torch.isfinite(faceness) | ~mask).all()):
        raise InputError("NaN or Inf in faceness")
    return mask


class Aggregator(nn.Module):
    """Base class of set aggregators (register subclasses under ``facecoreset.aggregators``).

    Subclasses implement :meth:`aggregate` (padded batch -> unnormalised ``[B,D]``) and may
    override :meth:`aggregate_ragged` with segment operations. Configuration is the dataclass
    ``Config``; ``Aggregator(**overrides)`` overlays it without mutating the defaults.

    Attributes:
        name: the registered name.
        trainable: whether it has learned weights (``facecoreset train`` can fit it).
        needs_checkpoint: whether its useful form needs weights from a file.
        uses_media: whether it reads ``media`` ids.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig
    trainable: ClassVar[bool] = False
    needs_checkpoint: ClassVar[bool] = False
    uses_media: ClassVar[bool] = False

    def __init__(self, config: Any = None, *, validate_args: bool = True, **overrides: Any) -> None:
        super().__init__()
        base = config if config is not None else self.Config()
        self.config = overlay_config(base, type(self).__name__, **overrides)
        self.validate_args = validate_args

    # -- to implement --------------------------------------------------------------
    def aggregate(self, features: Tensor, norms: Tensor, mask: Tensor, media: Tensor | None,
                  faceness: Tensor | None) -> Tensor:
        """Return unnormalised descriptors [B,D]; padding (``~mask``) must not matter."""
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------
    def forward(self, features: Tensor, norms: Tensor, mask: Tensor | None = None,
                media: Tensor | None = None, faceness: Tensor | None = None) -> Tensor:
        """Aggregate a padded batch ``[B,N,D]`` into unit descriptors ``[B,D]``."""
        return self.embed(features, norms, mask, media, faceness)[0]

    def embed(self, features: Tensor, norms: Tensor, mask: Tensor | None = None,
              media: Tensor | None = None, faceness: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Like ``forward`` but also returns the descriptors' norms ``[B]``."""
        if self.validate_args:
            mask = validate_set_batch(features, norms, mask, media, faceness)
        elif mask is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        raw = self.aggregate(features, norms, mask, media, faceness)
        return _normalize(raw)

    @torch.no_grad()
    def aggregate_ragged(self, sets: RaggedSets, max_elements: int = 65536,
                         device: torch.device | str | None = None,
                         workers: int | None = None) -> tuple[Tensor, Tensor]:
        """Descriptors ``[S,D]`` and norms ``[S]`` of every set of ``sets``, in set order.

        The default validates the flat rows once (when ``validate_args``), then aggregates
        size-bucketed padded batches; the result lives on CPU in float32.

        Args:
            sets: the ragged sets.
            max_elements: padded elements per bucket (batch x width).
            device: where to compute (default: the module's device).
            workers: on CPU, buckets run on this many threads at once, each op single-threaded
                (small per-bucket ops scale poorly inside one op); default
                ``torch.get_num_threads()``. Torch's thread count is set to 1 for the duration
                of the call. Ignored (1) on CUDA and under autocast.
        """
        if self.validate_args:
            sets.validate()
        device = torch.device(device) if device is not None else _module_device(self)
        out = torch.empty(sets.num_sets, sets.features.shape[1], dtype=torch.float32)
        out_norms = torch.empty(sets.num_sets, dtype=torch.float32)
        buckets = list(sets.buckets(max_elements=max_elements))

        inference = torch.is_inference_mode_enabled()

        def run(idx: Tensor) -> None:
            with torch.inference_mode(inference), torch.no_grad():  # both modes are per thread
                batch = sets.padded(idx).to(device)
                desc, norm = _normalize(self.aggregate(batch.features, batch.norms, batch.mask, batch.media,
                                                       batch.faceness))
                out[idx] = desc.float().cpu()
                out_norms[idx] = norm.float().cpu()

        if workers is None:
            workers = torch.get_num_threads()
        if device.type != "cpu" or torch.is_autocast_enabled("cpu") or min(workers, len(buckets)) <= 1:
            for idx in buckets:
                run(idx)
            return out, out_norms
        buckets.sort(key=lambda idx: -int(sets.sizes[idx].sum()))  # largest first: workers end together
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(min(workers, len(buckets))) as pool:
                list(pool.map(run, buckets))
        finally:
            torch.set_num_threads(before)
        return out, out_norms

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.config).items())

    # -- checkpoints ---------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, **overrides: Any) -> "Aggregator":
        """Build from a checkpoint written by :func:`facecoreset_plugin.save_checkpoint`."""
        from .checkpoint import load_aggregator_checkpoint

        return load_aggregator_checkpoint(cls, path, **overrides)


def _normalize(raw: Tensor) -> tuple[Tensor, Tensor]:
    norm = torch.linalg.vector_norm(raw.float(), dim=-1)
    unit = raw / norm.clamp_min(_EPS).to(raw.dtype).unsqueeze(-1)
    return unit, norm.to(raw.dtype)


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
