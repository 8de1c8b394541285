"""The shared layers of lrm.nn in float64: RoPE and the grouped, gated RMSNorm against loops."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import F64, assert_f64_close, check_grad, rand

from lrm.nn import RMSNorm, rope

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


# ----------------------------------------------------------------------------- lrm.nn


def test_rope_in_float64_is_the_exact_rotation():
    """RoPE at a large offset: angles formed in fp32 would be off by ~1e-3 rad there."""
    x, offset, base = rand(1, 2, 5, 8, seed=1), 1_000_003, 10000.0
    y = rope(x, offset + torch.arange(5), base)
    ref = torch.empty_like(x)
    for t in range(5):
        for i in range(4):
            ang = (offset + t) * base ** (-2 * i / 8)
            c, s = math.cos(ang), math.sin(ang)
            ref[..., t, i] = x[..., t, i] * c - x[..., t, i + 4] * s
            ref[..., t, i + 4] = x[..., t, i] * s + x[..., t, i + 4] * c
    assert_f64_close(y, ref, tol=1e-9)  # math.cos of an angle ~1e6 is itself good to ~1e-10


@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_grouped_gated_rmsnorm_in_float64(norm_before_gate):
    x, z = rand(2, 3, 12, seed=1), rand(2, 3, 12, seed=2)
    norm = RMSNorm(12, eps=1e-5, group_size=4, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.copy_(rand(12, seed=3))
    y = norm(x, z)
    ref, w = torch.empty_like(x), norm.weight.detach().tolist()
    for b in range(2):
        for t in range(3):
            gate = [v / (1 + math.exp(-v)) for v in z[b, t].tolist()]
            xs = x[b, t].tolist()
            if not norm_before_gate:
                xs = [a * g for a, g in zip(xs, gate, strict=True)]
            for g0 in range(0, 12, 4):
                rms = math.sqrt(math.fsum(v * v for v in xs[g0:g0 + 4]) / 4 + 1e-5)
                for c in range(g0, g0 + 4):
                    out = xs[c] / rms * w[c]
                    ref[b, t, c] = out * gate[c] if norm_before_gate else out
    assert y.dtype == F64
    assert_f64_close(y, ref)
    check_grad(lambda x, z: norm(x, z), x, z)
