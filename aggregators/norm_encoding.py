"""Sinusoidal encoding of a scalar (the feature norm), as FaceCoresetNet encodes quality."""

from __future__ import annotations

__all__ = ["sinusoidal_encoding"]

import math

import torch
from torch import Tensor

from facecoreset_plugin.errors import InputError


def sinusoidal_encoding(values: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Encode every scalar of ``values`` as a ``dim``-wide sin/cos vector (always float32).

    For ``k`` in ``0..dim/2-1``: ``theta_k = 2*pi*v / temperature**(2k/dim)``, output
    ``[2k] = sin(theta_k)`` and ``[2k+1] = cos(theta_k)``. The operations follow the
    official FaceCoresetNet order so results agree bit for bit in float32.

    Args:
        values: any shape ``[...]`` (norms); computed in float32 whatever their dtype.
        dim: output width, even.
        temperature: the base of the geometric frequency ladder.

    Returns:
        ``[..., dim]`` float32 tensor.
    """
    if dim <= 0 or dim % 2:
        raise InputError(f"sinusoidal_encoding: dim must be a positive even number, got {dim}")
    half = torch.arange(dim // 2, dtype=torch.float32, device=values.device)
    denom = temperature ** (2 * half / float(dim))
    theta = (values.float() * (2 * math.pi)).unsqueeze(-1) / denom
    if torch.is_grad_enabled() and theta.requires_grad:
        return torch.stack((theta.sin(), theta.cos()), dim=-1).flatten(-2)
    out = theta.new_empty(*theta.shape, 2)  # write interleaved in place: one pass less than stack
    torch.sin(theta, out=out[..., 0])
    torch.cos(theta, out=out[..., 1])
    return out.flatten(-2)
