"""5-point alignment: transform estimate against closed forms, warp against a plain loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facecoreset_plugin import InputError
from facecoreset_plugin.backbones.align import TEMPLATE_112, align_face, similarity_transform, warp_affine


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_exact_similarity_is_recovered():
    truth = _similarity(0.62, 0.3, -14.0, 20.5)  # loose crop -> template
    inv = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    landmarks = _apply(inv, TEMPLATE_112)  # a face that is an exact similarity of the template
    np.testing.assert_allclose(similarity_transform(landmarks), truth, atol=1e-9)


def test_least_squares_matches_complex_closed_form():
    rng = np.random.default_rng(0)
    src = TEMPLATE_112 * 1.7 + rng.normal(0, 3.0, size=(5, 2)) + 40
    # independent reference: least squares of z' = a z + b over complex numbers
    z = src[:, 0] + 1j * src[:, 1]
    w = TEMPLATE_112[:, 0] + 1j * TEMPLATE_112[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = (np.conj(zc) @ wc) / (np.conj(zc) @ zc)
    b = w.mean() - a * z.mean()
    ref = np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])
    np.testing.assert_allclose(similarity_transform(src), ref, atol=1e-9)


def test_bad_landmarks_raise():
    with pytest.raises(InputError, match=r"\[N,2\]"):
        similarity_transform(np.zeros((4, 2)))
    with pytest.raises(InputError, match="degenerate"):
        similarity_transform(np.ones((5, 2)))
    with pytest.raises(InputError, match="non-finite"):
        similarity_transform(np.full((5, 2), np.nan))


def _bilinear_loop(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    c, h, w = img.shape
    out = np.zeros((c, size, size))
    for y in range(size):
        for x in range(size):
            sx, sy, _ = inv @ [x, y, 1]
            x0, y0 = math.floor(sx), math.floor(sy)
            for yy, xx, wt in ((y0, x0, (1 - (sx - x0)) * (1 - (sy - y0))), (y0, x0 + 1, (sx - x0) * (1 - (sy - y0))),
                               (y0 + 1, x0, (1 - (sx - x0)) * (sy - y0)), (y0 + 1, x0 + 1, (sx - x0) * (sy - y0))):
                if 0 <= yy < h and 0 <= xx < w:
                    out[:, y, x] += wt * img[:, yy, xx]
    return out


def test_warp_matches_plain_bilinear_loop_with_zero_border():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, size=(3, 23, 19))
    m = _similarity(1.3, -0.4, 3.0, 9.0)
    got = warp_affine(torch.from_numpy(img), m, size=24).double().numpy()
    np.testing.assert_allclose(got, _bilinear_loop(img, m, 24), atol=1e-3)


def test_loose_crop_of_known_similarity_aligns_back_to_the_template():
    # a smooth pattern defined in template coordinates, rendered into a rotated, scaled loose crop
    def pattern(x, y):
        return 127.5 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)

    from_template = _similarity(1.4, -0.25, 0.0, 0.0)  # template pixel -> loose-crop pixel
    from_template[:, 2] = np.array([125.0, 118.0]) - from_template[:, :2] @ [56.0, 56.0]  # centre inside
    to_template = np.linalg.inv(np.vstack([from_template, [0, 0, 1]]))[:2]
    h, w = 240, 250  # the whole 112x112 template area lies inside the loose crop
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    tx = to_template[0, 0] * xs + to_template[0, 1] * ys + to_template[0, 2]
    ty = to_template[1, 0] * xs + to_template[1, 1] * ys + to_template[1, 2]
    loose = np.stack([pattern(tx, ty), pattern(ty, tx), pattern(tx + 5, ty)]).round().astype(np.uint8)
    inv = np.linalg.inv(np.vstack([to_template, [0, 0, 1]]))[:2]
    landmarks = _apply(inv, TEMPLATE_112).astype(np.float32)
    out = align_face(torch.from_numpy(loose), landmarks)
    assert out.dtype == torch.uint8 and out.shape == (3, 112, 112)
    gy, gx = np.mgrid[0:112, 0:112].astype(np.float64)
    expected = np.stack([pattern(gx, gy), pattern(gy, gx), pattern(gx + 5, gy)])
    err = np.abs(out.numpy().astype(np.float64) - expected)
    assert err.max() <= 4.0, err.max()  # interpolation + uint8 rounding only
