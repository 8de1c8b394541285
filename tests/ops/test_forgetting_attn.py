"""Forgetting attention (lrm.ops.forgetting_attn): blockwise == recurrent == quadratic (fp32
and float64), the fused CPU path, gradcheck, parity with fla's naive reference, dispatch and
the kernel on CUDA.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import LargestTensor, assert_f64_close, check_grad, rand

from lrm.ops.forgetting_attn import (
    forgetting_attn,
    forgetting_attn_fused,
    forgetting_attn_quadratic_ref,
    forgetting_attn_recurrent_ref,
    forgetting_attn_ref,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


def make(B=2, Tk=37, H=3, D=8, Dv=None, seed=0, gate_shift=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, Tk, H, D, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, Tk, H, Dv or D, generator=g, dtype=dtype)
    # gates spread over (0, 1): some heads forget fast, some hardly at all
    log_f = F.logsigmoid(2 * torch.randn(B, Tk, H, generator=g) + gate_shift)
    return q, k, v, log_f


def outputs_and_grads(fn, q, k, v, log_f, Tq=None, **kw):
    Tq = q.shape[1] if Tq is None else Tq
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, log_f)]
    q_, k_, v_, g_ = leaves
    o = fn(q_[:, q_.shape[1] - Tq:], k_, v_, g_, **kw)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(123))
    grads = torch.autograd.grad((o * do).sum(), leaves)
    return o, grads


@pytest.mark.parametrize(("Tk", "Tq", "block_q", "block_k"), [
    (37, 37, 8, 16),     # several tiles, ragged last tiles
    (37, 37, 128, 512),  # one tile (default sizes)
    (61, 61, 16, 5),     # key tiles smaller than query tiles
    (53, 19, 4, 8),      # a cache of 34 keys, then 19 queries
    (29, 1, 8, 8),       # decoding one token
])
def test_blockwise_equals_quadratic_outputs_and_gradients(Tk, Tq, block_q, block_k):
    q, k, v, log_f = make(Tk=Tk, Dv=6)
    o_ref, g_ref = outputs_and_grads(forgetting_attn_quadratic_ref, q, k, v, log_f, Tq)
    o, g = outputs_and_grads(forgetting_attn_ref, q, k, v, log_f, Tq,
                             block_q=block_q, block_k=block_k)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-4)
    for name, a, b in zip(["q", "k", "v", "log_f"], g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda s, n=name: f"d{n}: {s}")


@pytest.mark.parametrize(("Tk", "Tq"), [(23, 23), (23, 9)])
def test_recurrent_equals_quadratic(Tk, Tq):
    q, k, v, log_f = make(Tk=Tk)
    o_rec = forgetting_attn_recurrent_ref(q[:, Tk - Tq:], k, v, log_f)
    o_quad = forgetting_attn_quadratic_ref(q[:, Tk - Tq:], k, v, log_f)
    torch.testing.assert_close(o_rec, o_quad, atol=1e-5, rtol=1e-4)


def test_cache_form_equals_full_sequence():
    """Queries at positions T..T+L-1 over keys 0..T+L-1 are the tail of the full output."""
    q, k, v, log_f = make(Tk=41)
    full = forgetting_attn_ref(q, k, v, log_f, block_q=8, block_k=8)
    tail = forgetting_attn_ref(q[:, 30:], k, v, log_f, block_q=8, block_k=8)
    torch.testing.assert_close(tail, full[:, 30:], atol=1e-6, rtol=1e-5)


def test_no_forgetting_is_causal_softmax_attention():
    q, k, v, _ = make(Tk=45, D=16)
    zero = torch.zeros(q.shape[:3])
    o = forgetting_attn_ref(q, k, v, zero, block_q=16, block_k=8)
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                          is_causal=True).transpose(1, 2)
    torch.testing.assert_close(o, sdpa, atol=1e-5, rtol=1e-4)


def test_forgetting_changes_the_output():
    q, k, v, log_f = make(Tk=33)
    no_forget = forgetting_attn_ref(q, k, v, torch.zeros_like(log_f))
    assert (forgetting_attn_ref(q, k, v, log_f) - no_forget).abs().max() > 1e-2


def _load_fla_naive():
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("fla-core (a [dev] dependency) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "ops" / "forgetting_attn" / "naive.py"
    mod_spec = importlib.util.spec_from_file_location("_fla_forgetting_naive", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)  # only torch + einops: no triton needed
    return mod.naive_forgetting_attn


def test_parity_with_fla_naive():
    naive = _load_fla_naive()
    q, k, v, log_f = make(Tk=50, H=2, D=16)
    ours = forgetting_attn_ref(q, k, v, log_f, block_q=16, block_k=8)
    theirs = naive(q, k, v, log_f).to(ours.dtype)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    ours_scaled = forgetting_attn_ref(q, k, v, log_f, scale=0.3)
    torch.testing.assert_close(ours_scaled, naive(q, k, v, log_f, scale=0.3), atol=1e-5,
                               rtol=1e-4)


def test_blockwise_ref_never_materialises_T_by_T():
    B, T, H, D = 1, 1024, 1, 16
    q, k, v, log_f = (t.requires_grad_(True) for t in make(B=B, Tk=T, H=H, D=D))
    with LargestTensor() as mode:
        o = forgetting_attn_ref(q, k, v, log_f, block_q=64, block_k=128)
        o.square().sum().backward()
    # one tile is 64 x 128 = 8192 scores; T x T would be 1,048,576
    assert mode.largest <= max(64 * 128, T * D) * B * H, mode.largest
    with LargestTensor() as mode:
        forgetting_attn_quadratic_ref(q, k, v, log_f)
    assert mode.largest >= T * T  # the check above can see a (T, T) tensor


def test_long_sequences_keep_nearby_decays_exact():
    """|c| grows to ~1e4 here; the per-block rebasing keeps D_ij of nearby tokens exact."""
    q, k, v, _ = make(B=1, Tk=4000, H=1, D=8)
    log_f = torch.full(q.shape[:3], -3.0)  # c_T = -12000
    o = forgetting_attn_ref(q[:, -5:], k, v, log_f)
    # only the last ~10 keys matter; an exact answer from those alone:
    o_local = forgetting_attn_quadratic_ref(q[:, -5:], k[:, -40:], v[:, -40:], log_f[:, -40:])
    torch.testing.assert_close(o, o_local, atol=1e-6, rtol=1e-5)


def test_dispatch_falls_back_and_kernel_request_explains():
    q, k, v, log_f = make(Tk=9)
    torch.testing.assert_close(forgetting_attn(q, k, v, log_f), forgetting_attn_ref(q, k, v, log_f))
    with pytest.raises(RuntimeError, match="not all CUDA"):
        forgetting_attn(q, k, v, log_f, backend="kernel")
    with pytest.raises(ValueError, match="Tq <= Tk"):
        forgetting_attn_ref(k, q[:, :3], v[:, :3], log_f[:, :3])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fla_kernel_matches_ref_on_cuda():
    from lrm.ops import _kernels

    if not _kernels.HAS_FLA:
        pytest.fail("flash-linear-attention does not import on this CUDA machine")
    q, k, v, log_f = (t.cuda() for t in make(B=2, Tk=300, H=4, D=64))
    o_ref, g_ref = outputs_and_grads(forgetting_attn_ref, q, k, v, log_f)
    o, g = outputs_and_grads(lambda *a: forgetting_attn(*a, backend="kernel"), q, k, v, log_f)
    torch.testing.assert_close(o, o_ref, atol=2e-3, rtol=2e-3)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)


def _inputs(Tq: int, Tk: int, D: int = 6, Dv: int = 5, dtype=torch.float32, strong=False,
            B: int = 2, H: int = 3):
    g = torch.Generator().manual_seed(Tq * 100 + Tk)
    q = torch.randn(B, Tq, H, D, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(B, Tk, H, D, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(B, Tk, H, Dv, generator=g, dtype=dtype).requires_grad_()
    # strong forgetting makes c span hundreds: the per-block rebasing must keep it exact
    gate = torch.randn(B, Tk, H, generator=g, dtype=dtype) - (6.0 if strong else 0.0)
    return q, k, v, gate.requires_grad_()


def _grads(o, inputs):
    return torch.autograd.grad((o * o.cos()).sum(), inputs, retain_graph=True)


@pytest.mark.parametrize("strong", [False, True], ids=["mild", "strong_forgetting"])
@pytest.mark.parametrize("Tq,Tk", [(37, 37), (5, 37), (37, 50), (1, 9)])
def test_fused_equals_oracles(Tq, Tk, strong):
    q, k, v, gate = inputs = _inputs(Tq, Tk, strong=strong)
    args = (q, k, v, F.logsigmoid(gate))
    fused = forgetting_attn_fused(*args, block_q=8)  # several query blocks, the last one short
    for oracle in (forgetting_attn_quadratic_ref, forgetting_attn_recurrent_ref):
        ref = oracle(*args)
        torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-4)
        for gf, gr in zip(_grads(fused, inputs), _grads(ref, inputs), strict=True):
            torch.testing.assert_close(gf, gr, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("D,Dv", [(4, 3), (4, 9)], ids=["v_narrower", "v_wider"])
def test_fused_gradcheck_float64(D, Dv):
    q, k, v, gate = _inputs(7, 10, D=D, Dv=Dv, dtype=torch.float64, B=1, H=2)
    # fast mode (random projections of the Jacobian): the float64 kernel is slow on odd widths
    assert torch.autograd.gradcheck(
        lambda q, k, v, gate: forgetting_attn_fused(q, k, v, F.logsigmoid(gate), block_q=4),
        (q, k, v, gate), fast_mode=True)


def test_cpu_dispatch_uses_the_fused_path_and_bad_input_is_refused():
    q, k, v, gate = _inputs(20, 20)
    o = forgetting_attn(q, k, v, F.logsigmoid(gate))
    names, todo = set(), [o.grad_fn]
    while todo:  # the nodes of the graph
        fn = todo.pop()
        if fn is not None and type(fn).__name__ not in names:
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    assert "_FusedForgettingAttnBackward" in names
    torch.testing.assert_close(o, forgetting_attn_quadratic_ref(q, k, v, F.logsigmoid(gate)),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="block_q"):
        forgetting_attn_fused(q, k, v, F.logsigmoid(gate), block_q=0)


# ----------------------------------------------------------------------------- forgetting attn


def _fox_inputs(Tq: int, Tk: int):
    Bsz, H, D = 2, 2, 4
    q = rand(Bsz, Tq, H, D, seed=1)
    k, v = rand(Bsz, Tk, H, D, seed=2), rand(Bsz, Tk, H, D, seed=3)
    return q, k, v, F.logsigmoid(rand(Bsz, Tk, H, seed=4) + 2)


@pytest.mark.parametrize(("Tq", "Tk"), [(37, 37), (11, 37)], ids=["full", "cache"])
def test_forgetting_attn_ref_equals_recurrent_ref(Tq, Tk):
    args = _fox_inputs(Tq, Tk)
    o = forgetting_attn_ref(*args, block_q=8, block_k=5)
    assert_f64_close(o, forgetting_attn_recurrent_ref(*args))
    assert_f64_close(o, forgetting_attn_quadratic_ref(*args))


def test_forgetting_attn_gradcheck():
    def fn(q, k, v, log_f):
        return forgetting_attn_ref(q, k, v, log_f, block_q=3, block_k=2)

    check_grad(fn, *_fox_inputs(5, 7))

