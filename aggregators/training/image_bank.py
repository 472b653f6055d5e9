"""Build a feature bank from an image folder (one sub-folder per identity) with a frozen backbone.

Images must be aligned face crops (any square size; they are resized to the backbone's input
size). Each image gives two views: itself and its mirror image, so simulated clips in training
mix real augmentations.
"""

from __future__ import annotations

__all__ = ["IMAGE_SUFFIXES", "list_image_folder", "bank_from_image_folder"]

from pathlib import Path
from typing import Any

import torch

from facecoreset_plugin.errors import InputError

from .bank import save_bank

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_image_folder(root: str | Path) -> tuple[list[Path], list[int]]:
    """Image paths and integer labels (sub-folder index in sorted name order)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--train-images {root}: not a folder; expected one sub-folder of images per identity")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += images
        labels += [label] * len(images)
    if len({lab for lab in labels}) < 2:
        raise InputError(f"{root}: found {len(paths)} images in {len(folders)} identity folders; training needs "
                         f"at least 2 identity sub-folders holding {'/'.join(IMAGE_SUFFIXES)} files")
    return paths, labels


def _read(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    except OSError as exc:
        raise InputError(f"image {path} cannot be decoded ({exc}); remove or replace it") from exc
    return data.view(size, size, 3).permute(2, 0, 1)


@torch.no_grad()
def bank_from_image_folder(root: str | Path, backbone: Any, output: str | Path, device: str | torch.device = "cpu",
                           batch_size: int = 64, progress: bool = True) -> Path:
    """Embed every image (and its mirror) with the frozen ``backbone``; write a bank file.

    Args:
        root: folder with one sub-folder of aligned face crops per identity.
        backbone: a ``facecoreset_plugin`` backbone (``embed_images`` + ``preprocess``).
        output: the bank file to write (``.npz`` or ``.safetensors``).
        device: where the backbone runs.
        batch_size: images per forward pass.
        progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    paths, labels = list_image_folder(root)
    backbone = backbone.to(device).eval()
    size = int(getattr(getattr(backbone, "preprocess", None), "input_size", 112))
    feats, norms = [], []
    for start in tqdm(range(0, len(paths), batch_size), disable=not progress, desc="embed", unit="batch"):
        images = torch.stack([_read(p, size) for p in paths[start:start + batch_size]]).to(device)
        both = torch.cat([images, images.flip(3)])
        raw = backbone.embed_images(both).float().cpu()
        raw = torch.stack([raw[: len(images)], raw[len(images):]], dim=1)  # [b,2,D]: image, mirror
        n = torch.linalg.vector_norm(raw, dim=-1)
        feats.append(raw / n.clamp_min(1e-12).unsqueeze(-1))
        norms.append(n)
    return save_bank(output, torch.cat(feats), torch.cat(norms), torch.tensor(labels))
