"""The gated delta rule and GDN-2 (lrm.ops.delta_rule): chunked == recurrent (fp32 and float64),
parity with fla's naive references, gradcheck, the lean path, dispatch and the kernels on CUDA.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from _helpers import assert_f64_close, assert_lean_same, check_grad, gen, rand, saved_numel

from lrm.ops import delta_rule as dr
from lrm.ops.delta_rule import (
    gated_delta_rule,
    gated_delta_rule_lean,
    gated_delta_rule_recurrent_ref,
    gated_delta_rule_ref,
    gdn2,
    gdn2_lean,
    gdn2_recurrent_ref,
    gdn2_ref,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


B, H, K, V = 2, 2, 8, 12


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def fla_naive(op: str):
    """fla's pure-PyTorch naive.py for ``op``, loaded by path (importing fla.ops wants triton)."""
    spec = importlib.util.find_spec("fla")
    if spec is None:
        pytest.fail("fla-core (a [dev] dependency) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "ops", op, "naive.py")
    mod_spec = importlib.util.spec_from_file_location(f"_fla_naive_{op}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def gdn_inputs(T: int, seed: int = 0, device: str = "cpu", strong_decay: bool = False):
    g_ = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g_)
    k = F.normalize(torch.randn(B, T, H, K, generator=g_), dim=-1)
    v = torch.randn(B, T, H, V, generator=g_)
    g = F.logsigmoid(torch.randn(B, T, H, generator=g_) + 2.0)
    if strong_decay:  # α ≈ e^-30 at some steps: a naive exp(−cumsum) factorisation overflows
        g = g - 30.0 * (torch.rand(B, T, H, generator=g_) < 0.3)
    beta = torch.rand(B, T, H, generator=g_)
    h0 = torch.randn(B, H, K, V, generator=g_)
    return [t.to(device) for t in (q, k, v, g, beta, h0)]


def gdn2_inputs(T: int, seed: int = 0, device: str = "cpu"):
    g_ = torch.Generator().manual_seed(seed)
    q, k, v, _, _, h0 = gdn_inputs(T, seed, device)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=g_) + 2.0)
    b = torch.rand(B, T, H, K, generator=g_)
    w = torch.rand(B, T, H, V, generator=g_)
    return q, k, v, g.to(device), b.to(device), w.to(device), h0


def run_with_grads(fn, tensors, use_h0: bool, seed: int = 1):
    """fn(*tensors[:-1], initial_state=...) -> outputs, final state, grads of a random loss."""
    tensors = [t.clone().requires_grad_(True) for t in tensors]
    *args, h0 = tensors
    o, h = fn(*args, initial_state=h0 if use_h0 else None, return_final_state=True)
    g_ = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=g_).to(o)).sum() + \
        (h * torch.randn(h.shape, generator=g_).to(h)).sum()
    loss.backward()
    grads = [t.grad for t in (tensors if use_h0 else tensors[:-1])]
    return o.detach(), h.detach(), grads


TOL = dict(atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- GDN op


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
@pytest.mark.parametrize("T", [37, 100])
def test_chunk_equals_recurrent(T, use_h0):
    ins = gdn_inputs(T)
    ref = run_with_grads(dr.gated_delta_rule_recurrent_ref, ins, use_h0)
    chk = run_with_grads(lambda *a, **kw: dr.gated_delta_rule_ref(*a, chunk_size=16, **kw),
                         ins, use_h0)
    torch.testing.assert_close(chk[0], ref[0], **TOL)
    torch.testing.assert_close(chk[1], ref[1], **TOL)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "h0"], chk[2], ref[2], strict=False):
        torch.testing.assert_close(a, b, **TOL, msg=lambda s, n=name: f"grad {n}: {s}")


def test_chunk_is_stable_under_strong_decay():
    ins = gdn_inputs(50, strong_decay=True)
    ref = run_with_grads(dr.gated_delta_rule_recurrent_ref, ins, True)
    chk = run_with_grads(lambda *a, **kw: dr.gated_delta_rule_ref(*a, chunk_size=32, **kw),
                         ins, True)
    for a, b in zip([chk[0], chk[1], *chk[2]], [ref[0], ref[1], *ref[2]], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
def test_matches_fla_naive(use_h0):
    naive = fla_naive("gated_delta_rule")
    q, k, v, g, beta, h0 = gdn_inputs(77)
    h0 = h0 if use_h0 else None
    o, h = dr.gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0, return_final_state=True)
    # mind the orders: naive_recurrent takes (..., beta, g), naive_chunk (..., g, beta); fla
    # spells return_final_state as output_final_state
    o_r, h_r = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=h0,
                                                      output_final_state=True)
    o_c, h_c = naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                                  output_final_state=True)
    for o_ref, h_ref in ((o_r, h_r), (o_c, h_c)):
        torch.testing.assert_close(o, o_ref.float(), **TOL)
        torch.testing.assert_close(h, h_ref.float(), **TOL)


def test_delta_rule_overwrites_where_linear_attention_accumulates():
    """With α = 1, β = 1 and orthonormal keys, writing (k1, v3) after (k1, v1) replaces v1."""
    keys = torch.eye(K)[:2]  # k1, k2 orthonormal
    k = torch.stack([keys[0], keys[1], keys[0]])[None, :, None]  # (1, 3, 1, K)
    v = torch.randn(1, 3, 1, V)
    ones = torch.ones(1, 3, 1)
    q = k * K ** 0.5  # undo the default 1/√K scale: o_t = h_tᵀ k_t
    for fn in (dr.gated_delta_rule_recurrent_ref, dr.gated_delta_rule_ref):
        o, _ = fn(q, k, v, torch.zeros_like(ones), ones)
        torch.testing.assert_close(o[0, 2, 0], v[0, 2, 0])  # k1 now reads v3, not v1 + v3
        torch.testing.assert_close(o[0, 1, 0], v[0, 1, 0])  # k2 untouched
    # linear attention (GDN-2 with erase gate 0, write gate 1) sums both writes at k1
    o_lin, _ = dr.gdn2_ref(q, k, v, torch.zeros(1, 3, 1, K), torch.zeros(1, 3, 1, K),
                           torch.ones(1, 3, 1, V))
    torch.testing.assert_close(o_lin[0, 2, 0], v[0, 0, 0] + v[0, 2, 0])


def test_dispatch_on_cpu():
    q, k, v, g, beta, h0 = gdn_inputs(20)
    o, h = dr.gated_delta_rule(q, k, v, g, beta, initial_state=h0, return_final_state=True)
    o_ref, h_ref = dr.gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0,
                                           return_final_state=True)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(h, h_ref)
    with pytest.raises(RuntimeError, match="kernel"):
        dr.gated_delta_rule(q, k, v, g, beta, backend="kernel")
    with pytest.raises(ValueError, match="beta"):
        dr.gated_delta_rule(q, k, v, g, beta[:, :-1])


# ----------------------------------------------------------------------------- GDN-2 op


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
@pytest.mark.parametrize("T", [37, 100])
def test_gdn2_chunk_equals_recurrent(T, use_h0):
    ins = gdn2_inputs(T)
    ref = run_with_grads(dr.gdn2_recurrent_ref, ins, use_h0)
    chk = run_with_grads(lambda *a, **kw: dr.gdn2_ref(*a, chunk_size=16, **kw), ins, use_h0)
    torch.testing.assert_close(chk[0], ref[0], **TOL)
    torch.testing.assert_close(chk[1], ref[1], **TOL)
    for name, a, b in zip(["q", "k", "v", "g", "b", "w", "h0"], chk[2], ref[2], strict=False):
        torch.testing.assert_close(a, b, **TOL, msg=lambda s, n=name: f"grad {n}: {s}")


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
def test_gdn2_matches_fla_naive(use_h0):
    naive = fla_naive("gdn2")
    q, k, v, g, b, w, h0 = gdn2_inputs(77)
    h0 = h0 if use_h0 else None
    kw = dict(initial_state=h0, return_final_state=True)
    o, h = dr.gdn2_recurrent_ref(q, k, v, g, b, w, **kw)
    o_c, h_c = dr.gdn2_ref(q, k, v, g, b, w, **kw)
    fla_kw = dict(initial_state=h0, output_final_state=True)  # fla's spelling
    o_n, h_n = naive.naive_recurrent_gdn2(q, k, v, g, b, w, **fla_kw)
    o_nc, h_nc = naive.naive_chunk_gdn2(q, k, v, g, b, w, **fla_kw)
    for o_x, h_x in ((o_c, h_c), (o_n, h_n), (o_nc, h_nc)):
        torch.testing.assert_close(o_x.float(), o, **TOL)
        torch.testing.assert_close(h_x.float(), h, **TOL)


@pytest.mark.parametrize("fn2, fn1", [
    (dr.gdn2_recurrent_ref, dr.gated_delta_rule_recurrent_ref),
    (dr.gdn2_ref, dr.gated_delta_rule_ref)], ids=["recurrent", "chunk"])
def test_gdn2_with_tied_scalar_gates_is_gdn(fn2, fn1):
    q, k, v, g, beta, h0 = gdn_inputs(45)
    kw = dict(initial_state=h0, return_final_state=True)
    o2, h2 = fn2(q, k, v, g[..., None].expand(-1, -1, -1, K), beta[..., None].expand(q.shape),
                 beta[..., None].expand(v.shape), **kw)
    o1, h1 = fn1(q, k, v, g, beta, **kw)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(h2, h1, **TOL)


# ----------------------------------------------------------------------------- CUDA kernels


def test_hopper_triton_guard_mirrors_fla():
    from lrm.ops._kernels import gated_bwd_blocked_reason as why

    assert "#640" in why((9, 0), "3.6.0", has_tilelang=False)  # seen on an H200
    assert "#640" in why((9, 0), "3.4.0", has_tilelang=False)
    assert why((9, 0), "3.7.1", has_tilelang=False) is None
    assert why((9, 0), "3.3.1", has_tilelang=False) is None
    assert why((9, 0), "3.6.0", has_tilelang=True) is None  # fla then uses tilelang
    assert why((8, 0), "3.6.0", has_tilelang=False) is None  # A100: not affected
    assert why((10, 0), "3.6.0+git1234", has_tilelang=False) is None


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
def test_kernel_matches_ref_cuda(use_h0):
    ins = gdn_inputs(300, device="cuda")
    fla_fn = lambda *a, **kw: dr.gated_delta_rule(*a, backend="kernel", **kw)  # noqa: E731
    from lrm.ops import _kernels

    blocked = _kernels.fla_gated_bwd_blocked()
    if blocked:  # fla refuses this backward here: we must say so up front, not mid-backward
        with pytest.raises(RuntimeError, match="#640"):
            run_with_grads(fla_fn, ins, use_h0)
        with torch.no_grad():  # the chunk forward kernel still serves
            o_k, h_k = fla_fn(*ins[:5], initial_state=ins[5] if use_h0 else None,
                              return_final_state=True)
            o_r, h_r = dr.gated_delta_rule_ref(*ins[:5], initial_state=ins[5] if use_h0
                                               else None, return_final_state=True)
        torch.testing.assert_close(o_k, o_r, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(h_k, h_r, atol=2e-3, rtol=2e-3)
        return
    ker = run_with_grads(fla_fn, ins, use_h0)
    ref = run_with_grads(dr.gated_delta_rule_ref, ins, use_h0)
    tol = dict(atol=2e-3, rtol=2e-3)  # the kernel's tf32 matmuls
    torch.testing.assert_close(ker[0], ref[0], **tol)
    torch.testing.assert_close(ker[1], ref[1], **tol)
    for a, b in zip(ker[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, **tol)
    with torch.no_grad():  # T <= 64 without grad: the fused recurrent (decode) kernel
        q, k, v, g, beta = (t[:, :7] for t in ins[:5])
        h0 = ins[5] if use_h0 else None
        o_k, h_k = dr.gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                       return_final_state=True, backend="kernel")
        o_r, h_r = dr.gated_delta_rule_recurrent_ref(q, k, v, g, beta, initial_state=h0,
                                                     return_final_state=True)
    torch.testing.assert_close(o_k, o_r, **tol)
    torch.testing.assert_close(h_k, h_r, **tol)


@pytest.mark.cuda
@cuda
def test_gdn2_kernel_matches_ref_cuda():
    ins = gdn2_inputs(300, device="cuda")
    ker = run_with_grads(lambda *a, **kw: dr.gdn2(*a, backend="kernel", **kw), ins, True)
    ref = run_with_grads(dr.gdn2_ref, ins, True)
    tol = dict(atol=2e-3, rtol=2e-3)
    for a, b in zip([ker[0], ker[1], *ker[2]], [ref[0], ref[1], *ref[2]], strict=True):
        torch.testing.assert_close(a, b, **tol)


# ----------------------------------------------------------------------------- delta rule


def _delta_inputs(L: int, gdn2: bool):
    Bsz, H, K, V = 2, 2, 4, 3
    q, k = rand(Bsz, L, H, K, seed=1), F.normalize(rand(Bsz, L, H, K, seed=2), dim=-1)
    v, h0 = rand(Bsz, L, H, V, seed=3), rand(Bsz, H, K, V, seed=4)
    if gdn2:
        g = -F.softplus(rand(Bsz, L, H, K, seed=5))
        b, w = torch.sigmoid(rand(Bsz, L, H, K, seed=6)), torch.sigmoid(rand(Bsz, L, H, V, seed=7))
        return q, k, v, g, b, w, h0
    g, beta = -F.softplus(rand(Bsz, L, H, seed=5)), torch.sigmoid(rand(Bsz, L, H, seed=6))
    return q, k, v, g, beta, h0


def test_gated_delta_rule_ref_equals_recurrent_ref():
    *args, h0 = _delta_inputs(37, gdn2=False)
    kw = dict(initial_state=h0, return_final_state=True)
    o, h = gated_delta_rule_ref(*args, chunk_size=8, **kw)
    o_ref, h_ref = gated_delta_rule_recurrent_ref(*args, **kw)
    assert_f64_close(o, o_ref)
    assert_f64_close(h, h_ref)


def test_gdn2_ref_equals_recurrent_ref():
    *args, h0 = _delta_inputs(37, gdn2=True)
    kw = dict(initial_state=h0, return_final_state=True)
    o, h = gdn2_ref(*args, chunk_size=8, **kw)
    o_ref, h_ref = gdn2_recurrent_ref(*args, **kw)
    assert_f64_close(o, o_ref)
    assert_f64_close(h, h_ref)


@pytest.mark.parametrize("gdn2", [False, True], ids=["gdn", "gdn2"])
def test_delta_rule_gradcheck(gdn2):
    op = gdn2_ref if gdn2 else gated_delta_rule_ref

    def fn(*args):
        *gates, h0 = args
        return op(*gates, initial_state=h0, return_final_state=True, chunk_size=3)

    check_grad(fn, *_delta_inputs(7, gdn2))


# ----------------------------------------------------------------------------- delta rules


def _gdn_inputs(with_state: bool, T: int = 37, B: int = 2, H: int = 3, K: int = 4, V: int = 5):
    g = gen()

    def r(*s):
        return torch.randn(*s, generator=g).requires_grad_()

    q, k, v, a, beta = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, T, H), r(B, T, H)
    h0 = r(B, H, K, V) if with_state else None
    return q, k, v, a, beta, h0


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_gated_delta_rule_lean_equals_ref_and_recurrence(with_state, monkeypatch):
    q, k, v, a, beta, h0 = inputs = _gdn_inputs(with_state)

    def run(fn, **kw):
        return fn(q, F.normalize(k, dim=-1), v, F.logsigmoid(a), beta.sigmoid(),
                  initial_state=h0, return_final_state=True, **kw)

    lean = run(gated_delta_rule_lean, chunk_size=4, block_size=8)
    assert_lean_same(lean, run(gated_delta_rule_ref, chunk_size=4), inputs)
    assert_lean_same(lean, run(gated_delta_rule_recurrent_ref), inputs)
    monkeypatch.setattr("lrm.ops.delta_rule.SMALL_ELEMENTS", 0)  # beyond the small-shape limit
    o, _ = gated_delta_rule(q, k, v, F.logsigmoid(a), beta.sigmoid())
    assert "BlockRecompute" in type(o.grad_fn).__name__


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_gdn2_lean_equals_recurrence(with_state):
    q, k, v, _, _, h0 = _gdn_inputs(with_state)
    g = gen(3)
    gk, b, w = (torch.randn(*s, generator=g).requires_grad_()
                for s in (q.shape, q.shape, v.shape))
    inputs = (q, k, v, gk, b, w, h0)

    def run(fn, **kw):
        return fn(q, F.normalize(k, dim=-1), v, F.logsigmoid(gk), b.sigmoid(), w.sigmoid(),
                  initial_state=h0, return_final_state=True, **kw)

    assert_lean_same(run(gdn2_lean, chunk_size=4, block_size=8), run(gdn2_recurrent_ref),
                 inputs)
    o, _ = gdn2(q, k, v, F.logsigmoid(gk), b.sigmoid(), w.sigmoid())
    assert "BlockRecompute" in type(o.grad_fn).__name__


def test_gated_delta_rule_lean_keeps_less_than_the_reference():
    q, k, v, a, beta, _ = _gdn_inputs(False, T=1024, B=1, H=2, K=16, V=16)
    args = (q, F.normalize(k, dim=-1), v, F.logsigmoid(a), beta.sigmoid())
    lean = saved_numel(lambda: gated_delta_rule_lean(*args, block_size=128))
    ref = saved_numel(lambda: gated_delta_rule_ref(*args))
    assert lean < ref / 3, (lean, ref)
