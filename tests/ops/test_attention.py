"""The causal softmax attention op (lrm.ops.attention): the three tiers agree, gradcheck, and the
window, the cache offset and the persistent keys against direct constructions."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from lrm.ops.attention import attention, attention_recurrent_ref, attention_ref, causal_mask

F64 = torch.float64
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-5), F64: dict(atol=1e-12, rtol=1e-12)}


def inputs(Lk, Lq, Np=0, D=8, Dv=8, q_persistent=False, dtype=F64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    B, H = 2, 3

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)

    q, k, v = r(B, H, Lq, D), r(B, H, Lk, D), r(B, H, Lk, Dv)
    kw = {}
    if Np:
        kw = dict(k_persistent=r(B, H, Np, D), v_persistent=r(B, H, Np, Dv))
        if q_persistent:
            kw["q_persistent"] = r(B, H, Lq, D)
    return q, k, v, kw


# (Lk, Lq, window, Np, q_persistent, Dv): odd lengths, a cache (Lq < Lk), one query, windows
# shorter and longer than the call, persistent keys with and without their own queries, value
# widths that are a multiple of the key width (SDPA per slice) and that are not
CASES = [
    (37, 37, None, 0, False, 8),
    (37, 37, None, 3, False, 16),
    (29, 11, None, 0, False, 12),
    (29, 11, None, 2, True, 8),
    (23, 1, None, 2, False, 8),
    (37, 37, 5, 0, False, 8),
    (29, 11, 7, 3, True, 16),
    (31, 13, 40, 2, False, 12),
    (23, 1, 4, 0, False, 8),
    (9, 9, 1, 2, True, 8),
]


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize(("Lk", "Lq", "window", "Np", "qp", "Dv"), CASES)
def test_three_tiers_agree(Lk, Lq, window, Np, qp, Dv, dtype):
    q, k, v, kw = inputs(Lk, Lq, Np, Dv=Dv, q_persistent=qp, dtype=dtype)
    oracle = attention_recurrent_ref(q, k, v, window=window, **kw)
    assert oracle.shape == (2, 3, Lq, Dv) and oracle.dtype == dtype
    torch.testing.assert_close(attention_ref(q, k, v, window=window, **kw), oracle, **TOL[dtype])
    torch.testing.assert_close(attention(q, k, v, window=window, **kw), oracle, **TOL[dtype])


@pytest.mark.parametrize(("Lk", "Lq", "window", "Np", "qp", "Dv"), CASES[1::2])
def test_gradients_agree_in_float64(Lk, Lq, window, Np, qp, Dv):
    q, k, v, kw = inputs(Lk, Lq, Np, Dv=Dv, q_persistent=qp, requires_grad=True)
    leaves = (q, k, v, *kw.values())
    do = torch.randn(2, 3, Lq, Dv, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads = [torch.autograd.grad((fn(q, k, v, window=window, **kw) * do).sum(), leaves)
             for fn in (attention_recurrent_ref, attention_ref, attention)]
    for g in grads[1:]:
        for a, b in zip(g, grads[0], strict=True):
            torch.testing.assert_close(a, b, **TOL[F64])


@pytest.mark.parametrize("fn", [attention, attention_ref, attention_recurrent_ref])
@pytest.mark.parametrize(("Lk", "Lq", "window", "Np", "qp"),
                         [(7, 5, None, 2, False), (7, 5, 3, 2, True), (6, 6, 2, 0, False)])
def test_gradcheck(fn, Lk, Lq, window, Np, qp):
    g = torch.Generator().manual_seed(2)
    B, H, D = 1, 2, 4

    def r(n):
        return torch.randn(B, H, n, D, generator=g, dtype=F64, requires_grad=True)

    leaves = [r(Lq), r(Lk), r(Lk)] + ([r(Np), r(Np)] if Np else []) + ([r(Lq)] if qp else [])

    def f(q, k, v, *rest):
        kw = dict(zip(["k_persistent", "v_persistent", "q_persistent"], rest, strict=False))
        return fn(q, k, v, window=window, scale=0.7, **kw)

    assert gradcheck(f, tuple(leaves), eps=1e-6, atol=1e-8)


def test_causal_mask_written_out():
    # 3 queries, the last 3 of 5 keys (a cache of 2): query i at position 2 + i
    assert causal_mask(3, 5).tolist() == [[1, 1, 1, 0, 0],
                                          [1, 1, 1, 1, 0],
                                          [1, 1, 1, 1, 1]]
    # a window of 2: itself and one key back
    assert causal_mask(3, 5, window=2).tolist() == [[0, 1, 1, 0, 0],
                                                    [0, 0, 1, 1, 0],
                                                    [0, 0, 0, 1, 1]]
    # a tile: queries at 4, 5, keys at 3..6
    assert causal_mask(2, 4, q0=4, k0=3).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize(("Lk", "Lq", "window"), [(29, 11, 7), (37, 37, 5), (12, 12, 1)])
def test_window_is_attention_over_the_last_w_keys(Lk, Lq, window):
    """Query i alone over the keys max(0, p − w + 1)..p is the windowed query i."""
    q, k, v, _ = inputs(Lk, Lq)
    o = attention(q, k, v, window=window)
    for i in range(Lq):
        p = Lk - Lq + i
        lo = max(0, p - window + 1)
        one = attention(q[:, :, i:i + 1], k[:, :, lo:p + 1], v[:, :, lo:p + 1])
        torch.testing.assert_close(o[:, :, i:i + 1], one, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("Lk", "Lq"), [(29, 11), (37, 37), (8, 1)])
def test_persistent_keys_are_a_cache_every_query_sees(Lk, Lq):
    """Without a window, persistent keys are keys in front of the cache (every query is later
    than them)."""
    q, k, v, kw = inputs(Lk, Lq, Np=3)
    o = attention(q, k, v, **kw)
    kc = torch.cat([kw["k_persistent"], k], 2)
    vc = torch.cat([kw["v_persistent"], v], 2)
    torch.testing.assert_close(o, attention_recurrent_ref(q, kc, vc), atol=1e-12, rtol=1e-12)


def test_persistent_keys_meet_their_own_queries():
    """q_persistent scores the persistent keys, q the others: the same as q everywhere when the
    persistent keys are rotated to compensate (here: q_persistent = q·M, k^P' = k^P·Mᵀ)."""
    q, k, v, kw = inputs(19, 7, Np=2)
    M = torch.linalg.qr(torch.randn(8, 8, dtype=F64))[0]
    o = attention(q, k, v, window=4, q_persistent=q @ M, k_persistent=kw["k_persistent"] @ M,
                  v_persistent=kw["v_persistent"])
    torch.testing.assert_close(o, attention_ref(q, k, v, window=4, **kw), atol=1e-12,
                               rtol=1e-12)


def test_backend_ref_and_env(monkeypatch):
    q, k, v, kw = inputs(29, 11, Np=2)
    ref = attention_ref(q, k, v, **kw)
    assert torch.equal(attention(q, k, v, backend="ref", **kw), ref)
    monkeypatch.setenv("LRM_BACKEND", "ref")
    assert torch.equal(attention(q, k, v, **kw), ref)


def test_bf16_returns_bf16_close_to_fp32():
    q, k, v, kw = inputs(21, 9, Np=2, dtype=torch.float32)
    ref = attention_ref(q, k, v, window=6, **kw)
    for fn in (attention, attention_ref):
        o = fn(*(t.bfloat16() for t in (q, k, v)), window=6,
               **{n: t.bfloat16() for n, t in kw.items()})
        assert o.dtype == torch.bfloat16
        torch.testing.assert_close(o.float(), ref, atol=3e-2, rtol=3e-2)


def test_errors_say_what_to_do():
    q, k, v, kw = inputs(9, 4, Np=2)
    with pytest.raises(ValueError, match="Lq <= Lk"):
        attention(k, q, q)
    with pytest.raises(ValueError, match="window"):
        attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="both"):
        attention(q, k, v, k_persistent=kw["k_persistent"])
    with pytest.raises(ValueError, match="shape mismatch"):
        attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="q_persistent"):
        attention(q, k, v, q_persistent=q[:, :, :2], **kw)


@pytest.mark.parametrize(("Tk", "Tq", "w"), [(30, 30, 8), (24, 17, 8), (9, 1, 4), (40, 13, 16)])
def test_sliding_window_attention_blockwise_equals_dense(Tk, Tq, w):
    g = torch.Generator().manual_seed(0)
    q, qr, k, v = (torch.randn(2, 2, n, 4, generator=g, dtype=F64) for n in (Tq, Tq, Tk, Tk))
    kp, vp = (torch.randn(2, 2, 3, 4, generator=g, dtype=F64) for _ in range(2))
    o = attention(qr, k, v, window=w, k_persistent=kp, v_persistent=vp, q_persistent=q)
    i, j = torch.arange(Tk - Tq, Tk)[:, None], torch.arange(Tk)[None]
    band = (j <= i) & (j > i - w)
    s = torch.cat([q @ kp.transpose(-1, -2), (qr @ k.transpose(-1, -2)).masked_fill(
        ~band, float("-inf"))], -1) / 2
    ref = torch.softmax(s, -1) @ torch.cat([vp, v], 2)
    torch.testing.assert_close(o, ref, atol=1e-12, rtol=1e-12)
