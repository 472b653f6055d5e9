"""IJB-B/C loose crops as a torch ``Dataset`` of aligned uint8 faces (decoding and alignment in workers)."""

from __future__ import annotations

__all__ = ["IJBImages", "read_5pts", "AlignedFaces"]

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .align import align_face


@dataclass(frozen=True)
class IJBImages:
    """The image list of one IJB protocol, in 5pts-file order."""

    image_dir: Path  # <root>/IJB?/loose_crop
    names: list[str]  # image file names, row order of the features
    landmarks: np.ndarray  # float32 [M,5,2] landmarks in loose-crop pixels
    faceness: np.ndarray  # float32 [M] detector scores
    meta_file: Path  # the ijb?_name_5pts_score.txt these rows were read from


def read_5pts(protocol: str, data_root: str | Path) -> IJBImages:
    """Read ``ijb?_name_5pts_score.txt`` with the IJB runner's strict parser and check the image folder.

    The layout (which file, which image folder) is :func:`eval_protocols.ijb_files.meta_paths`'.
    """
    from eval_protocols.ijb_files import meta_paths, read_name_5pts_score

    paths = meta_paths(data_root, protocol.lower())
    meta, image_dir = paths.name_5pts_score, paths.image_dir
    if not meta.is_file():
        raise InputError(f"{meta} not found; --data-root must hold {meta.parent.parent.name}/meta/{meta.name}")
    if not image_dir.is_dir():
        raise InputError(f"{image_dir} not found; the loose crops must be in {image_dir}")
    names, lm, faceness = read_name_5pts_score(meta)
    if not names:
        raise InputError(f"{meta}: no images listed")
    return IJBImages(image_dir, list(names), np.asarray(lm, np.float32), np.asarray(faceness, np.float32), meta)


def _read_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"image {path} listed in the 5pts file is missing") from None
    except OSError as exc:
        raise InputError(f"image {path} cannot be decoded ({exc}); re-download or remove it") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class AlignedFaces(Dataset):
    """Item ``i`` -> ``(global index, aligned RGB uint8 [3,112,112])`` of ``indices[i]``."""

    def __init__(self, images: IJBImages, indices: Sequence[int] | None = None) -> None:
        self.images = images
        self.indices = list(range(len(images.names))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        idx = self.indices[i]
        img = _read_rgb(self.images.image_dir / self.images.names[idx])
        return idx, align_face(img, self.images.landmarks[idx])
