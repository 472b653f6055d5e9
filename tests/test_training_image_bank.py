"""Image-folder banks: a frozen backbone embeds every image and its mirror into a bank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aggregators.training.bank import load_bank
from aggregators.training.image_bank import bank_from_image_folder, list_image_folder
from facecoreset_plugin.backbones.base import Backbone, Preprocess
from facecoreset_plugin.errors import InputError


class PixelBackbone(Backbone):
    """A real (tiny) Backbone: mean colour per image quadrant, so mirrors differ."""

    def __init__(self) -> None:
        super().__init__(Preprocess(input_size=8), embedding_dim=12)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        q = torch.nn.functional.adaptive_avg_pool2d(images, 2)  # [B,3,2,2]
        return q.flatten(1) + 2.0


def _folder(root, ids=3, per=2, size=8):
    rng = np.random.default_rng(0)
    for i in range(ids):
        (root / f"person_{i}").mkdir(parents=True)
        for j in range(per):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"person_{i}" / f"{j}.png")
    (root / "person_0" / "notes.txt").write_text("ignored")
    return root


def test_bank_matches_a_per_image_loop(tmp_path):
    root = _folder(tmp_path / "imgs")
    bb = PixelBackbone()
    path = bank_from_image_folder(root, bb, tmp_path / "bank.npz", batch_size=4, progress=False)
    bank = load_bank(path)
    paths, labels = list_image_folder(root)
    assert bank.features.shape == (6, 2, 12) and bank.labels.tolist() == labels == [0, 0, 1, 1, 2, 2]
    for i, p in enumerate(paths):
        img = torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None]
        for v, x in enumerate((img, img.flip(3))):
            raw = bb.embed(bb.prepare(x))[0]
            torch.testing.assert_close(bank.norms[i, v], raw.norm(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(bank.features[i, v], raw / raw.norm(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bank.features[:, 0], bank.features[:, 1])


def test_images_of_another_size_are_resized(tmp_path):
    root = _folder(tmp_path / "imgs", size=16)
    bank = load_bank(bank_from_image_folder(root, PixelBackbone(), tmp_path / "b.npz", progress=False))
    assert bank.num_images == 6


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        list_image_folder(tmp_path / "missing")
    _folder(tmp_path / "one", ids=1)
    with pytest.raises(InputError, match="at least 2 identity"):
        list_image_folder(tmp_path / "one")
    root = _folder(tmp_path / "broken")
    (root / "person_1" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.jpg"):
        bank_from_image_folder(root, PixelBackbone(), tmp_path / "x.npz", progress=False)
