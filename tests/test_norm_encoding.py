"""Sinusoidal norm encoding against a plain math loop."""

from __future__ import annotations

import math

import pytest
import torch

from aggregators.norm_encoding import sinusoidal_encoding
from facecoreset_plugin import InputError


def _loop(v: float, dim: int) -> list[float]:
    out = []
    for k in range(dim // 2):
        theta = 2 * math.pi * v / 10000 ** (2 * k / dim)
        out += [math.sin(theta), math.cos(theta)]
    return out


@pytest.mark.parametrize("dim", [8, 512])
def test_matches_the_formula(dim):
    values = torch.tensor([[0.0, 0.5, 7.25], [13.0, 31.9, 1e-3]])
    enc = sinusoidal_encoding(values, dim)
    assert enc.shape == (2, 3, dim) and enc.dtype == torch.float32
    want = torch.tensor([[_loop(float(v), dim) for v in row] for row in values], dtype=torch.float64)
    torch.testing.assert_close(enc.double(), want, rtol=0, atol=2e-5)


def test_half_precision_input_is_encoded_in_float32():
    v = torch.tensor([23.5, 40.0])
    assert torch.equal(sinusoidal_encoding(v.bfloat16(), 16), sinusoidal_encoding(v.bfloat16().float(), 16))


def test_odd_width_is_refused():
    with pytest.raises(InputError, match="even"):
        sinusoidal_encoding(torch.ones(2), 7)
