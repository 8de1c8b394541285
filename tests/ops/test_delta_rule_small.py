"""The gated delta rule's CPU dispatch (chunk sized by the key head, block recomputation only
beyond SMALL_ELEMENTS) against the token-by-token oracle: outputs, final states and the
gradients of every input and of the initial state, in float32 and float64, at odd lengths, on
both sides of the size test; and the choices themselves, which depend on the shape only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import weighted_loss

from lrm.ops import delta_rule as R
from lrm.ops.delta_rule import cpu_chunk_size, gated_delta_rule, gated_delta_rule_recurrent_ref

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4, grad_atol=1e-3),
       torch.float64: dict(atol=1e-10, rtol=1e-10, grad_atol=1e-9)}


def _inputs(dtype, T, B=4, H=2, K=8, V=16, seed=0):  # B·H = 8 rows: chunk 16
    gen = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v = r(B, T, H, V)
    g = -0.3 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    h0 = 0.5 * r(B, H, K, V)
    return [t.to(dtype).requires_grad_() for t in (q, k, v, g, beta, h0)]


@pytest.mark.parametrize("lean", [False, True], ids=["reference", "recomputed"])
@pytest.mark.parametrize("T", [37, 1, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpu_dispatch_equals_recurrence(dtype, T, lean, monkeypatch):
    if lean:  # every shape takes the recomputed path, in blocks of 32 tokens
        monkeypatch.setattr(R, "SMALL_ELEMENTS", 0)
        monkeypatch.setattr(R, "BLOCK_SIZE", 32)
    inputs = _inputs(dtype, T)
    q, k, v, g, beta, h0 = inputs
    got = gated_delta_rule(q, k, v, g, beta, scale=0.7, initial_state=h0,
                           return_final_state=True)
    want = gated_delta_rule_recurrent_ref(q, k, v, g, beta, scale=0.7, initial_state=h0,
                                          return_final_state=True)
    tol = TOL[dtype]
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=tol["atol"], rtol=tol["rtol"])
    for a, b in zip(torch.autograd.grad(weighted_loss(*got), inputs),
                    torch.autograd.grad(weighted_loss(*want), inputs), strict=True):
        torch.testing.assert_close(a, b, atol=tol["grad_atol"], rtol=tol["rtol"])


def test_cpu_chunk_follows_the_key_head_and_the_rows():
    assert [cpu_chunk_size(K, 32) for K in (16, 32, 64, 128, 256)] == [16, 16, 32, 32, 64]
    assert [cpu_chunk_size(K, 3) for K in (16, 32, 64, 128, 256)] == [32, 32, 32, 32, 64]


@pytest.mark.parametrize("T,expect", [(128, "gated_delta_rule_ref"),
                                      (4096, "gated_delta_rule_lean")])
def test_recomputation_only_beyond_the_size_limit(T, expect, monkeypatch):
    """B·H·T·(K + V + C) = 32·1·128·(64 + 128 + 32) is below SMALL_ELEMENTS; at T 4096 above."""
    called = []
    for name in ("gated_delta_rule_ref", "gated_delta_rule_lean"):
        monkeypatch.setattr(R, name, lambda *a, name=name, **k: called.append(
            (name, k["chunk_size"])))
    q = torch.zeros(32, T, 1, 64)
    gated_delta_rule(q, q, torch.zeros(32, T, 1, 128), torch.zeros(32, T, 1),
                     torch.zeros(32, T, 1))
    assert called == [(expect, 32)]
