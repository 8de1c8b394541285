"""The memory-lean scans (custom autograd functions with chunk/block recomputation) against the
references they replace on the CPU path: outputs, final states and every gradient; gradcheck in
float64; what they keep for the backward pass; and that the dispatchers use them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import scan_inputs

from lrm.ops.delta_rule import (
    gated_delta_rule,
    gated_delta_rule_lean,
    gated_delta_rule_recurrent_ref,
    gated_delta_rule_ref,
    gdn2,
    gdn2_lean,
    gdn2_recurrent_ref,
)
from lrm.ops.recompute import block_recompute
from lrm.ops.selective_scan import (
    lean_scan_core,
    selective_scan,
    selective_scan_lean,
    selective_scan_recurrent_ref,
    selective_scan_ref,
)
from lrm.ops.ssd import ssd, ssd_lean, ssd_recurrent_ref, ssd_ref


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grads(out, inputs):
    y, h = out
    loss = (y * torch.cos(y)).sum() + h.sin().sum()  # non-trivial weights on every output
    # the graph is kept: one lean result is compared with two references
    return torch.autograd.grad(loss, [t for t in inputs if t is not None], retain_graph=True)


def _assert_same(lean, ref, inputs, atol=1e-4, grad_atol=1e-3):
    torch.testing.assert_close(lean[0], ref[0], atol=atol, rtol=1e-4)
    torch.testing.assert_close(lean[1], ref[1], atol=atol, rtol=1e-4)
    for gl, gr in zip(_grads(lean, inputs), _grads(ref, inputs), strict=True):
        torch.testing.assert_close(gl, gr, atol=grad_atol, rtol=1e-4)


def _saved_numel(fn) -> int:
    """Elements autograd keeps for the backward pass while ``fn()`` runs (each storage once)."""
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


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
    _assert_same(lean, selective_scan_ref(*args, initial_state=h0, chunk_size=8), inputs)
    _assert_same(lean, selective_scan_recurrent_ref(*args, initial_state=h0), inputs)


@pytest.mark.parametrize("L", [1, 2])
def test_selective_scan_lean_decode_steps(L):
    """One or two tokens with a state (decoding): a time axis of 1 is not time-invariance."""
    u, delta, A, B, C, D, z, bias, h0 = inputs = scan_inputs("shared", True, L=L)
    args = (u, delta, A, B, C, D, z, bias, True, True)
    _assert_same(selective_scan_lean(*args, initial_state=h0),
                 selective_scan_recurrent_ref(*args, initial_state=h0), inputs)


@pytest.mark.parametrize("time_invariant_B", [False, True])
def test_lean_scan_core_gradcheck_float64(time_invariant_B):
    g = _gen(1)
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
        g = _gen()
        u = torch.randn(b, d, L, generator=g, requires_grad=True)
        delta = torch.rand(b, d, L, generator=g, requires_grad=True)
        A = -torch.rand(d, n, generator=g).requires_grad_()
        B = torch.randn(b, n, L, generator=g, requires_grad=True)
        C = torch.randn(b, n, L, generator=g, requires_grad=True)
        return _saved_numel(lambda: fn(u, delta, A, B, C, chunk_size=Q))

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


# ----------------------------------------------------------------------------- block recompute


def test_block_recompute_gradcheck_float64():
    """A toy scalar-decay scan with a parameter: every input, the shared one and h0 get exact
    gradients through the recomputed blocks (block 3 does not divide L = 10)."""
    g = _gen(2)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(2, 10, 3, generator=g, **f64).requires_grad_()
    a = torch.rand(2, 10, generator=g, **f64).requires_grad_()
    w = torch.randn(3, generator=g, **f64).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, **f64).requires_grad_()

    def step(x_b, a_b, w_, h):
        ys = []
        for t in range(x_b.shape[1]):  # the toy step may loop: it is not an op
            h = a_b[:, t, None] * h + w_ * x_b[:, t]
            ys.append(h.tanh())
        return torch.stack(ys, 1), h

    def lean(x, a, w, h0):
        return block_recompute(step, [x, a], [1, 1], [w], h0, block=3, out_dim=1)

    torch.testing.assert_close(lean(x, a, w, h0), step(x, a, w, h0))
    assert torch.autograd.gradcheck(lean, (x, a, w, h0))


# ----------------------------------------------------------------------------- SSD


def _ssd_inputs(with_state: bool, L: int = 37, b: int = 2, H: int = 4, P: int = 3, G: int = 2,
                N: int = 5):
    g = _gen()

    def r(*s):
        return torch.randn(*s, generator=g).requires_grad_()

    x, dt = r(b, L, H, P), r(b, L, H)
    A = (-torch.rand(H, generator=g) * 4 - 0.1).requires_grad_()
    B, C = r(b, L, G, N), r(b, L, G, N)
    D, z, dt_bias = r(H, P), r(b, L, H, P), r(H)
    h0 = r(b, H, P, N) if with_state else None
    return x, dt, A, B, C, D, z, dt_bias, h0


@pytest.mark.parametrize("options", [True, False], ids=["D_z_bias", "plain"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_ssd_lean_equals_ref_and_recurrence(with_state, options):
    x, dt, A, B, C, D, z, dt_bias, h0 = _ssd_inputs(with_state)
    if not options:
        D = z = dt_bias = None
    inputs = (x, dt, A, B, C, D, z, dt_bias, h0)
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    lean = ssd_lean(x, dt, A, B, C, 4, block_size=8, **kw)  # 5 blocks, the last one short
    _assert_same(lean, ssd_ref(x, dt, A, B, C, 4, **kw), inputs)
    _assert_same(lean, ssd_recurrent_ref(x, dt, A, B, C, **kw), inputs)


def test_ssd_lean_keeps_less_than_the_reference_and_dispatch_uses_it(monkeypatch):
    x, dt, A, B, C, *_ = _ssd_inputs(False, L=1024, b=1, H=4, P=8, G=1, N=8)
    lean = _saved_numel(lambda: ssd_lean(x, dt, A, B, C, 64, block_size=128, dt_softplus=True))
    ref = _saved_numel(lambda: ssd_ref(x, dt, A, B, C, 64, dt_softplus=True))
    inputs = x.numel() + dt.numel() + B.numel() + C.numel()
    states = (1024 // 128 + 1) * 4 * 8 * 8
    assert lean <= 2 * inputs + states + A.numel(), (lean, inputs, states)
    assert lean < ref / 3, (lean, ref)
    monkeypatch.setattr("lrm.ops.ssd.SMALL_ELEMENTS", 0)  # beyond the small-shape limit
    y = ssd(x, dt, A, B, C, 64, dt_softplus=True)
    assert "BlockRecompute" in type(y.grad_fn).__name__


# ----------------------------------------------------------------------------- delta rules


def _gdn_inputs(with_state: bool, T: int = 37, B: int = 2, H: int = 3, K: int = 4, V: int = 5):
    g = _gen()

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
    _assert_same(lean, run(gated_delta_rule_ref, chunk_size=4), inputs)
    _assert_same(lean, run(gated_delta_rule_recurrent_ref), inputs)
    monkeypatch.setattr("lrm.ops.delta_rule.SMALL_ELEMENTS", 0)  # beyond the small-shape limit
    o, _ = gated_delta_rule(q, k, v, F.logsigmoid(a), beta.sigmoid())
    assert "BlockRecompute" in type(o.grad_fn).__name__


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_gdn2_lean_equals_recurrence(with_state):
    q, k, v, _, _, h0 = _gdn_inputs(with_state)
    g = _gen(3)
    gk, b, w = (torch.randn(*s, generator=g).requires_grad_()
                for s in (q.shape, q.shape, v.shape))
    inputs = (q, k, v, gk, b, w, h0)

    def run(fn, **kw):
        return fn(q, F.normalize(k, dim=-1), v, F.logsigmoid(gk), b.sigmoid(), w.sigmoid(),
                  initial_state=h0, return_final_state=True, **kw)

    _assert_same(run(gdn2_lean, chunk_size=4, block_size=8), run(gdn2_recurrent_ref),
                 inputs)
    o, _ = gdn2(q, k, v, F.logsigmoid(gk), b.sigmoid(), w.sigmoid())
    assert "BlockRecompute" in type(o.grad_fn).__name__


def test_gated_delta_rule_lean_keeps_less_than_the_reference():
    q, k, v, a, beta, _ = _gdn_inputs(False, T=1024, B=1, H=2, K=16, V=16)
    args = (q, F.normalize(k, dim=-1), v, F.logsigmoid(a), beta.sigmoid())
    lean = _saved_numel(lambda: gated_delta_rule_lean(*args, block_size=128))
    ref = _saved_numel(lambda: gated_delta_rule_ref(*args))
    assert lean < ref / 3, (lean, ref)
