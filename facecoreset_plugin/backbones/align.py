"""5-point face alignment: least-squares similarity transform to the 112x112 template, then a warp.

The template is insightface's ArcFace template shifted by x + 8 (REFERENCE.md section 4); the
transform is the Umeyama least-squares similarity (rotation, uniform scale, translation), the same
estimate ``skimage.transform.SimilarityTransform`` gives; the warp is bilinear with zero border,
pixel centres at integer coordinates (OpenCV's ``warpAffine`` convention).
"""

from __future__ import annotations

__all__ = ["TEMPLATE_112", "similarity_transform", "warp_affine", "align_face"]

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

#: landmark targets (x, y) in the 112x112 crop: left eye, right eye, nose, left/right mouth corner
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray = TEMPLATE_112) -> np.ndarray:
    """Least-squares similarity ``M [2,3]`` with ``dst ~ M @ [src; 1]`` (Umeyama 1991).

    Args:
        src: points ``[N,2]`` (x, y), e.g. the 5 detected landmarks in image pixels.
        dst: target points ``[N,2]``; the 112x112 template by default.

    Raises:
        InputError: shapes differ, fewer than 2 points, non-finite or degenerate (all equal) points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise InputError(f"landmarks must be [N,2] matching the template {dst.shape}, got {src.shape}")
    if not np.isfinite(src).all():
        raise InputError(f"landmarks contain non-finite values: {src.tolist()}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    if var_s <= 1e-12:
        raise InputError(f"degenerate landmarks (all points coincide): {src.tolist()}")
    cov = d_c.T @ s_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float(sing @ d) / var_s
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp_affine(image: torch.Tensor, matrix: np.ndarray | torch.Tensor, size: int = 112) -> torch.Tensor:
    """Warp ``image [C,H,W]`` (any float/uint8) by ``matrix [2,3]`` (source -> output pixels).

    Output pixel ``(x, y)`` samples the source at ``M^-1 (x, y)`` bilinearly; outside is 0.
    Returns float32 ``[C,size,size]``.
    """
    if image.ndim != 3:
        raise InputError(f"expected an image [C,H,W], got shape {tuple(image.shape)}")
    m = np.asarray(matrix, dtype=np.float64)
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    _, h, w = image.shape
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = np.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], axis=-1)
    grid_t = torch.from_numpy(grid).to(device=image.device, dtype=torch.float32)[None]
    out = F.grid_sample(image[None].float(), grid_t, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0]


def align_face(image: torch.Tensor, landmarks: np.ndarray, size: int = 112) -> torch.Tensor:
    """Aligned ``uint8 [C,size,size]`` crop of ``image [C,H,W]`` from its 5 landmarks ``[5,2]``."""
    if size != 112:
        raise InputError(f"the 5-point template is defined for 112x112 output, got size={size}")
    out = warp_affine(image, similarity_transform(landmarks), size)
    return out.round_().clamp_(0, 255).to(torch.uint8)
