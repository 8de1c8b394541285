"""The selective scan op (lrm.ops.selective_scan): the chunked reference against the recurrence
(fp32 and float64), gradcheck, its memory, the lean path, dispatch and the kernel on CUDA.

The small-shape CPU path has its own module, test_selective_scan_small.py.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import (
    assert_f64_close,
    assert_lean_same,
    check_grad,
    gen,
    rand,
    saved_numel,
    scan_inputs,
)

from lrm.ops.selective_scan import (
    lean_scan_core,
    selective_scan,
    selective_scan_lean,
    selective_scan_recurrent_ref,
    selective_scan_ref,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


TOL = dict(atol=1e-4, rtol=1e-4)


def _grads(out, inputs):
    y, h = out
    loss = (y * torch.cos(y)).sum() + h.sin().sum()  # non-trivial weights on every output
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


# ----------------------------------------------------------------------------- selective scan


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("form", ["shared", "grouped", "time_invariant"])
def test_selective_scan_ref_equals_recurrence(form, with_state):
    u, delta, A, B, C, D, z, bias, h0 = inputs = scan_inputs(form, with_state)
    args = (u, delta, A, B, C, D, z, bias, True, True)
    fast = selective_scan_ref(*args, initial_state=h0, chunk_size=8)  # 37 = 4·8 + 5
    slow = selective_scan_recurrent_ref(*args, initial_state=h0)
    torch.testing.assert_close(fast[0], slow[0], **TOL)
    torch.testing.assert_close(fast[1], slow[1], **TOL)
    for gf, gs in zip(_grads(fast, inputs), _grads(slow, inputs), strict=True):
        torch.testing.assert_close(gf, gs, atol=1e-3, rtol=1e-4)


def test_selective_scan_without_options_and_streaming():
    u, delta, A, B, C, *_ = scan_inputs("shared", False, L=29)
    delta = torch.nn.functional.softplus(delta.detach())
    y = selective_scan_ref(u, delta, A, B, C, chunk_size=4)
    torch.testing.assert_close(y, selective_scan_recurrent_ref(u, delta, A, B, C), **TOL)
    # two calls with the state passed along == one call
    y1, h = selective_scan_ref(u[..., :11], delta[..., :11], A, B[..., :11], C[..., :11],
                               return_final_state=True)
    y2, h2 = selective_scan_ref(u[..., 11:], delta[..., 11:], A, B[..., 11:], C[..., 11:],
                                return_final_state=True, initial_state=h)
    y_full, h_full = selective_scan_ref(u, delta, A, B, C, return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full, **TOL)
    torch.testing.assert_close(h2, h_full, **TOL)


def test_selective_scan_dispatch_on_cpu():
    u, delta, A, B, C, D, z, bias, _ = scan_inputs("shared", False)
    ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D, z, bias, True), ref)
    with pytest.raises(RuntimeError, match="kernel"):
        selective_scan(u, delta, A, B, C, backend="kernel")
    with pytest.raises(ValueError, match=r"\(D, N\)"):
        selective_scan_ref(u, delta, A[:3], B, C)


def test_selective_scan_ref_keeps_no_per_token_state_for_backward():
    b, d, n = 1, 16, 16

    def run(L):
        g = torch.Generator().manual_seed(0)
        u = torch.randn(b, d, L, generator=g, requires_grad=True)
        delta = torch.rand(b, d, L, generator=g, requires_grad=True)
        A = -torch.rand(d, n, generator=g).requires_grad_()
        B, C = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
        return saved_numel(lambda: selective_scan_ref(u, delta, A, B, C, chunk_size=32))

    saved = run(1024)
    assert saved < 0.5 * b * 1024 * d * n, f"backward keeps {saved} floats: (B, L, D, N)-sized"
    assert 1.8 < run(2048) / saved < 2.2  # linear in L


# ----------------------------------------------------------------------------- CUDA kernels

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("form", ["shared", "grouped"])
def test_selective_scan_kernel_equals_ref(form):
    from lrm.ops import _kernels

    if _kernels.get("selective_scan_fn") is None:
        pytest.fail("mamba-ssm's selective_scan_fn does not import on this CUDA machine")
    u, delta, A, B, C, D, z, bias, _ = (
        None if t is None else t.detach().cuda().requires_grad_()
        for t in scan_inputs(form, False, L=301, d=64, n=16))
    args = (u, delta, A, B, C, D, z, bias, True, True)
    k = selective_scan(*args, backend="kernel")
    r = selective_scan_ref(*args)
    torch.testing.assert_close(k[0], r[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(k[1], r[1], atol=1e-3, rtol=1e-3)
    inputs = (u, delta, A, B, C, D, z, bias)
    gk = torch.autograd.grad(k[0].square().sum(), inputs)  # the kernel: no grad via last state
    gr = torch.autograd.grad(r[0].square().sum(), inputs)
    for a, b in zip(gk, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-3)


# ----------------------------------------------------------------------------- selective scan


def _f64_scan_inputs(L: int, grouped: bool):
    Bsz, D, N = 2, 4, 3
    u, delta, z = rand(Bsz, D, L, seed=1), rand(Bsz, D, L, seed=2), rand(Bsz, D, L, seed=3)
    A = -torch.exp(rand(D, N, seed=4))
    shape = (Bsz, 2, N, L) if grouped else (Bsz, N, L)
    B, C = rand(*shape, seed=5), rand(*shape, seed=6)
    Dskip, bias, h0 = rand(D, seed=7), rand(D, seed=8), rand(Bsz, D, N, seed=9)
    return u, delta, A, B, C, Dskip, z, bias, h0


@pytest.mark.parametrize("grouped", [False, True])
def test_selective_scan_ref_equals_recurrent_ref(grouped):
    u, delta, A, B, C, Dskip, z, bias, h0 = _f64_scan_inputs(37, grouped)
    kw = dict(delta_bias=bias, delta_softplus=True, return_final_state=True, initial_state=h0)
    y, h = selective_scan_ref(u, delta, A, B, C, Dskip, z, chunk_size=8, **kw)
    y_ref, h_ref = selective_scan_recurrent_ref(u, delta, A, B, C, Dskip, z, **kw)
    assert_f64_close(y, y_ref)
    assert_f64_close(h, h_ref)


def test_selective_scan_gradcheck():
    inputs = _f64_scan_inputs(7, grouped=False)

    def fn(u, delta, A, B, C, Dskip, z, bias, h0):
        y, h = selective_scan_ref(u, delta, A, B, C, Dskip, z, bias, True, True, h0,
                                  chunk_size=3)  # 7 = 3 + 3 + 1
        return y, h

    check_grad(fn, *inputs)


# ----------------------------------------------------------------------------- selective scan


# (chunk, block): blocks of several chunks, the last block short (37 = 2·16 + 5); one chunk
# per block; and the default (one block, one padded chunk)
@pytest.mark.parametrize("chunk,block", [(1, 5), (4, 16), (8, 8), (64, None)])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("form", ["shared", "grouped", "time_invariant"])
def test_selective_scan_lean_equals_ref_and_recurrence(form, with_state, chunk, block):
    u, delta, A, B, C, D, z, bias, h0 = inputs = scan_inputs(form, with_state)
    args = (u, delta, A, B, C, D, z, bias, True, True)
    lean = selective_scan_lean(*args, initial_state=h0, chunk_size=chunk, block_size=block)
    assert_lean_same(lean, selective_scan_ref(*args, initial_state=h0, chunk_size=8), inputs)
    assert_lean_same(lean, selective_scan_recurrent_ref(*args, initial_state=h0), inputs)


@pytest.mark.parametrize("L", [1, 2])
def test_selective_scan_lean_decode_steps(L):
    """One or two tokens with a state (decoding): a time axis of 1 is not time-invariance."""
    u, delta, A, B, C, D, z, bias, h0 = inputs = scan_inputs("shared", True, L=L)
    args = (u, delta, A, B, C, D, z, bias, True, True)
    assert_lean_same(selective_scan_lean(*args, initial_state=h0),
                 selective_scan_recurrent_ref(*args, initial_state=h0), inputs)


@pytest.mark.parametrize("time_invariant_B", [False, True])
def test_lean_scan_core_gradcheck_float64(time_invariant_B):
    g = gen(1)
    f64 = dict(dtype=torch.float64)
    b, G, E, L, N = 2, 2, 3, 11, 4
    u = torch.randn(b, G, E, L, generator=g, **f64).requires_grad_()
    delta = torch.rand(b, G, E, L, generator=g, **f64).requires_grad_()
    A = (-torch.rand(G, E, N, generator=g, **f64) * 2).requires_grad_()
    B = (torch.randn(1, G, E, 1, N, generator=g, **f64) if time_invariant_B
         else torch.randn(b, G, 1, L, N, generator=g, **f64)).requires_grad_()
    C = torch.randn(b, 1, 1, L, N, generator=g, **f64).requires_grad_()
    h0 = torch.randn(b, G, E, N, generator=g, **f64).requires_grad_()
    # blocks of 2 chunks of 2: 11 tokens make 3 blocks, the last one padded
    assert torch.autograd.gradcheck(lambda *t: lean_scan_core(*t, chunk_size=2, block_size=4),
                                    (u, delta, A, B, C, h0))


def test_selective_scan_lean_keeps_inputs_and_one_state_per_chunk():
    b, d, n, Q = 1, 16, 16, 32

    def run(L, fn):
        g = gen()
        u = torch.randn(b, d, L, generator=g, requires_grad=True)
        delta = torch.rand(b, d, L, generator=g, requires_grad=True)
        A = -torch.rand(d, n, generator=g).requires_grad_()
        B = torch.randn(b, n, L, generator=g, requires_grad=True)
        C = torch.randn(b, n, L, generator=g, requires_grad=True)
        return saved_numel(lambda: fn(u, delta, A, B, C, chunk_size=Q))

    L = 1024
    saved = run(L, selective_scan_lean)
    # u, Δ, B, C (fp32 already, so no prepared copies), and L/Q + 1 states of (d, n); one
    # chunk's (d, Q, n) states kept per chunk would be L·d·n = 4× the inputs
    inputs, states = b * L * (2 * d + 2 * n), (L // Q + 1) * b * d * n
    assert saved <= 1.5 * inputs + states + d * n, (saved, inputs, states)
    assert 1.8 < run(2 * L, selective_scan_lean) / saved < 2.2  # linear in L


def test_selective_scan_dispatch_uses_lean_path(monkeypatch):
    # above the small-shape path's state size (which this test's inputs are not)
    monkeypatch.setattr("lrm.ops.selective_scan.SMALL_SLICE_ELEMENTS", 0)
    u, delta, A, B, C, D, z, bias, _ = scan_inputs("grouped", False)
    y = selective_scan(u, delta, A, B, C, D, z, bias, True)
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C, D, z, bias, True))
    names = set()
    todo = [y.grad_fn]
    while todo:  # walk the graph: the scan node is the lean function's, not a checkpoint
        fn = todo.pop()
        if fn is not None and type(fn).__name__ not in names:
            names.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
    assert "_LeanSelectiveScanBackward" in names


def test_lean_scan_rejects_bad_chunk():
    u, delta, A, B, C, *_ = scan_inputs("shared", False)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_lean(u, delta, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="block_size"):
        selective_scan_lean(u, delta, A, B, C, block_size=0)
