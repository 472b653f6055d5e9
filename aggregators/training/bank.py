"""Feature banks: per-image backbone features, norms and identity labels for training.

A bank file is ``.npz`` or ``.safetensors`` with the keys

* ``features`` [N,D] unit rows, or [N,V,D] with V augmented views per image,
* ``norms`` [N] (or [N,V]) feature norms, the quality signal,
* ``labels`` [N] integer identity ids (any values),
* ``media`` [N] optional integer ids; frames of one video clip share one.
"""

from __future__ import annotations

__all__ = ["FeatureBank", "load_bank", "save_bank", "split_identities"]

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from eval_protocols.features_io import read_array_file
from facecoreset_plugin.errors import InputError
from facecoreset_plugin.safe_io import atomic_write

_UNIT_TOL = 1e-2
_REQUIRED = ("features", "norms", "labels")


@dataclass
class FeatureBank:
    """Validated training features; ``classes`` are labels remapped to 0..C-1."""

    features: Tensor  # [N,V,D] float32 unit rows (V = 1 when the file has no views)
    norms: Tensor  # [N,V] float32 >= 0
    labels: Tensor  # [N] int64 identity ids as stored in the file
    media: Tensor | None = None  # [N] int64 clip ids, or None
    source: str = "<memory>"  # where it was read from, for messages

    def __post_init__(self) -> None:
        if self.features.dim() == 2:
            self.features = self.features.unsqueeze(1)
        if self.norms.dim() == 1:
            self.norms = self.norms.unsqueeze(1)
        _validate(self.features, self.norms, self.labels, self.media, self.source)
        ids, self.classes = torch.unique(self.labels, return_inverse=True)
        self.identity_ids = ids  # [C] original label of class c

    @property
    def num_images(self) -> int:
        return self.features.shape[0]

    @property
    def num_views(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.identity_ids)

    def subset(self, rows: Tensor) -> "FeatureBank":
        """A bank of the given image rows (labels kept, classes recomputed)."""
        media = None if self.media is None else self.media[rows]
        return FeatureBank(self.features[rows], self.norms[rows], self.labels[rows], media, self.source)


def _validate(features: Tensor, norms: Tensor, labels: Tensor, media: Tensor | None, source: str) -> None:
    if features.dim() != 3 or features.shape[0] == 0 or features.shape[2] == 0:
        raise InputError(f"{source}: 'features' must be [N,D] or [N,V,D] with N, D > 0, got {tuple(features.shape)}")
    n, v, _ = features.shape
    if tuple(norms.shape) != (n, v):
        want = f"[{n}]" if v == 1 else f"[{n},{v}]"
        raise InputError(f"{source}: 'norms' must be {want} to match 'features' {tuple(features.shape)}, "
                         f"got {tuple(norms.shape)} (squeeze a trailing 1)")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise InputError(f"{source}: 'labels' must be [N]=[{n}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise InputError(f"{source}: 'labels' must hold integer identity ids, got dtype {labels.dtype}")
    if media is not None and (media.dim() != 1 or media.shape[0] != n or media.dtype.is_floating_point):
        raise InputError(f"{source}: 'media' must be integer [N]=[{n}], got {media.dtype} {tuple(media.shape)}")
    finite = torch.isfinite(features).all(-1) & torch.isfinite(norms)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite.all(-1)).flatten()[:10].tolist()
        raise InputError(f"{source}: NaN or Inf in features/norms at rows {bad}; drop or recompute those rows")
    if bool((norms < 0).any()):
        bad = torch.nonzero((norms < 0).any(-1)).flatten()[:10].tolist()
        raise InputError(f"{source}: negative norms at rows {bad}; norms are vector lengths (>= 0)")
    length = torch.linalg.vector_norm(features, dim=-1)
    off = (length - 1).abs() > _UNIT_TOL
    if bool(off.any()):
        row = int(torch.nonzero(off.any(-1))[0])
        raise InputError(
            f"{source}: 'features' rows must be unit length (row {row} has length {float(length[row].max()):.4g}); "
            "store f/|f| in 'features' and |f| in 'norms'"
        )


def _to_tensor(name: str, value: np.ndarray | Tensor, source: str) -> Tensor:
    t = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
    if name in ("features", "norms"):
        if not t.dtype.is_floating_point:
            raise InputError(f"{source}: '{name}' must be floating point, got {t.dtype}")
        return t.to(torch.float32)
    return t.to(torch.int64) if not (t.dtype.is_floating_point or t.dtype == torch.bool) else t


def load_bank(path: str | Path) -> FeatureBank:
    """Read and validate a bank file (``.npz`` or ``.safetensors``).

    Raises:
        InputError: unknown suffix, corrupt or truncated file, missing keys, wrong shapes or dtypes,
            non-unit rows.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "feature bank not found", str(path))
    arrays = read_array_file(path)  # InputError naming the file for a wrong suffix or a corrupt file
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}; a bank holds {list(_REQUIRED)} and optional 'media' "
                         f"(found {sorted(arrays)})")
    t = {k: _to_tensor(k, arrays[k], str(path)) for k in (*_REQUIRED, "media") if k in arrays}
    return FeatureBank(t["features"], t["norms"], t["labels"], t.get("media"), str(path))


def save_bank(path: str | Path, features: Tensor, norms: Tensor, labels: Tensor,
              media: Tensor | None = None) -> Path:
    """Atomically write a bank file; the suffix (``.npz``/``.safetensors``) picks the format."""
    path = Path(path)
    arrays = {"features": features.float(), "norms": norms.float(), "labels": labels.long()}
    if media is not None:
        arrays["media"] = media.long()
    FeatureBank(*(arrays[k] for k in _REQUIRED), arrays.get("media"), str(path))  # validate before writing
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with atomic_write(path) as fh:
            np.savez(fh, **{k: v.contiguous().numpy() for k, v in arrays.items()})
    elif suffix == ".safetensors":
        from safetensors.torch import save

        with atomic_write(path) as fh:
            fh.write(save({k: v.contiguous() for k, v in arrays.items()}))
    else:
        raise InputError(f"{path}: unknown bank format {suffix!r}; use .npz or .safetensors")
    return path


def split_identities(bank: FeatureBank, fraction: float, seed: int) -> tuple[FeatureBank, FeatureBank | None]:
    """Split off ``fraction`` of the identities (at least 2) as a held-out validation bank."""
    if fraction <= 0:
        return bank, None
    if not 0 < fraction < 1:
        raise InputError(f"validation fraction must be in [0, 1), got {fraction}")
    c = bank.num_classes
    n_val = max(2, int(round(c * fraction)))
    if c - n_val < 2:
        raise InputError(f"{bank.source}: {c} identities are too few to hold out {fraction:.0%} for validation; "
                         "use a larger bank or --val-fraction 0")
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(c, dtype=torch.bool)
    held[torch.randperm(c, generator=g)[:n_val]] = True
    is_val = held[bank.classes]
    return bank.subset(torch.nonzero(~is_val).flatten()), bank.subset(torch.nonzero(is_val).flatten())
