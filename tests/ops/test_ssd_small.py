"""The SSD's CPU dispatch (chunk sized by the head's state, block recomputation only beyond
SMALL_ELEMENTS) against the token-by-token oracle: outputs, final states and the gradients of
every input and of the initial state, in float32 and float64, at odd lengths, on both sides of
the size test; and the choices themselves, which depend on the shape only."""

from __future__ import annotations

import pytest
import torch
from _helpers import weighted_loss

from lrm.ops import ssd as S
from lrm.ops.ssd import cpu_chunk_size, ssd, ssd_recurrent_ref

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4, grad_atol=1e-3),
       torch.float64: dict(atol=1e-10, rtol=1e-10, grad_atol=1e-9)}


def _inputs(dtype, L, b=2, H=4, P=3, G=2, N=5, d_per_channel=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype)

    x, dt, B, C, z = r(b, L, H, P), r(b, L, H), r(b, L, G, N), r(b, L, G, N), r(b, L, H, P)
    A = -(torch.rand(H, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    D = r(H, P) if d_per_channel else r(H)
    dt_bias, h0 = r(H), r(b, H, P, N, scale=0.5)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D, z, dt_bias, h0)]


@pytest.mark.parametrize("lean", [False, True], ids=["reference", "recomputed"])
@pytest.mark.parametrize("L", [37, 1, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpu_dispatch_equals_recurrence(dtype, L, lean, monkeypatch):
    if lean:  # every shape takes the recomputed path, in blocks of 32 tokens
        monkeypatch.setattr(S, "SMALL_ELEMENTS", 0)
        monkeypatch.setattr(S, "BLOCK_SIZE", 32)
    inputs = _inputs(dtype, L, d_per_channel=L == 70)
    x, dt, A, B, C, D, z, dt_bias, h0 = inputs
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    got = ssd(x, dt, A, B, C, 256, **kw)
    want = ssd_recurrent_ref(x, dt, A, B, C, **kw)
    tol = TOL[dtype]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=tol["atol"], rtol=tol["rtol"])
    for g, w in zip(torch.autograd.grad(weighted_loss(*got), inputs),
                    torch.autograd.grad(weighted_loss(*want), inputs), strict=True):
        torch.testing.assert_close(g, w, atol=tol["grad_atol"], rtol=tol["rtol"])


def test_cpu_chunk_follows_the_head_state_and_never_exceeds_the_callers():
    assert cpu_chunk_size(8, 16, 256) == 16  # mamba2 at d 32: head 8 × state 16
    assert cpu_chunk_size(32, 64, 256) == 32  # d 128
    assert cpu_chunk_size(64, 128, 256) == 64  # d 256
    assert cpu_chunk_size(64, 128, 8) == 8


@pytest.mark.parametrize("L,expect", [(64, "ssd_ref"), (4096, "ssd_lean")])
def test_recomputation_only_beyond_the_size_limit(L, expect, monkeypatch):
    """B·H·L·Q = 32·8·64·16 is below SMALL_ELEMENTS; 32·8·4096·16 is above."""
    called = []
    for name in ("ssd_ref", "ssd_lean"):
        monkeypatch.setattr(S, name, lambda *a, name=name, **k: called.append((name, a[5])))
    x = torch.zeros(32, L, 8, 8)
    ssd(x, torch.zeros(32, L, 8), -torch.ones(8), torch.zeros(32, L, 1, 16),
        torch.zeros(32, L, 1, 16), 256)
    assert called == [(expect, 16)]
