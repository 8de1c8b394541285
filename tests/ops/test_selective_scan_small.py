"""The small-shape selective scan (sequential, cache-sized blocks, written-out backward)
against the token-by-token oracle: outputs, final states and the gradients of every input, in
float32 and float64; gradcheck in float64; and the size test of the dispatch."""

from __future__ import annotations

import pytest
import torch
from _helpers import scan_inputs

from lrm.ops import selective_scan as ss
from lrm.ops.selective_scan import (
    selective_scan,
    selective_scan_recurrent_ref,
    selective_scan_small,
    small_scan_core,
)

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4, grad_atol=1e-3),
       torch.float64: dict(atol=1e-10, rtol=1e-10, grad_atol=1e-9)}


def _inputs(form, with_state, dtype, L):
    return [None if t is None else t.detach().to(dtype).requires_grad_()
            for t in scan_inputs(form, with_state, L=L)]


def _loss(out, final_state: bool):
    if not final_state:
        return (out * torch.cos(out)).sum()
    y, h = out
    return (y * torch.cos(y)).sum() + h.sin().sum()  # non-trivial weights on every output


def _check(fn, inputs, softplus, final_state, dtype, **kw):
    u, delta, A, B, C, D, z, bias, h0 = inputs
    args = (u, delta, A, B, C, D, z, bias, softplus, final_state)
    got = fn(*args, initial_state=h0, **kw)
    want = selective_scan_recurrent_ref(*args, initial_state=h0)
    tol = TOL[dtype]
    for g, w in zip(got if final_state else [got], want if final_state else [want], strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, atol=tol["atol"], rtol=tol["rtol"])
    leaves = [t for t in inputs if t is not None]
    for g, w in zip(torch.autograd.grad(_loss(got, final_state), leaves),
                    torch.autograd.grad(_loss(want, final_state), leaves), strict=True):
        torch.testing.assert_close(g, w, atol=tol["grad_atol"], rtol=tol["rtol"])


# block sizes: one block (the default at this size), one token per block, and blocks of 4 with
# a short last one (37 = 9·4 + 1); L = 1 is a single step (decoding)
@pytest.mark.parametrize("block", [None, 1, 4])
@pytest.mark.parametrize("L", [37, 1])
@pytest.mark.parametrize("final_state", [False, True], ids=["y_only", "final_state"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("softplus", [False, True], ids=["raw_delta", "softplus"])
@pytest.mark.parametrize("form", ["shared", "grouped", "time_invariant"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_small_equals_recurrence(dtype, form, softplus, with_state, final_state, L, block):
    inputs = _inputs(form, with_state, dtype, L)
    if not softplus:  # a raw Δ + bias must be positive for decays ≤ 1, as softplus makes it
        with torch.no_grad():
            inputs[1].abs_()
            inputs[7].abs_()
    _check(selective_scan_small, inputs, softplus, final_state, dtype, block_size=block)


# groups of blocks per kept state (the backward recomputes a group's entering states from the
# one kept): 37 tokens in blocks of 4 make 10 blocks, so groups of 3 leave a short last group;
# blocks of one token in groups of 8 are the default for N = 64 at batch 32
@pytest.mark.parametrize(("block", "group"), [(4, 3), (4, 10), (1, 8), (37, 2)])
@pytest.mark.parametrize("final_state", [False, True], ids=["y_only", "final_state"])
@pytest.mark.parametrize("form", ["shared", "grouped", "time_invariant"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_small_groups_equal_recurrence(dtype, form, final_state, block, group):
    inputs = _inputs(form, True, dtype, 37)
    _check(selective_scan_small, inputs, True, final_state, dtype, block_size=block, group=group)


def test_small_keeps_one_state_per_group():
    """What the backward keeps of the states: one (B, D, N) state per group of blocks, and by
    default at most SMALL_KEPT_PER_TOKEN state elements per token and channel."""
    u, delta, A, B, C, *_ = scan_inputs("shared", False, L=37)
    for block, group, kept in [(4, 1, 10), (4, 3, 4), (1, 8, 5), (1, 1, 37)]:
        y = selective_scan_small(u, delta, A, B, C, block_size=block, group=group)
        node = next(f for f in _nodes(y) if type(f).__name__ == "_SmallSelectiveScanBackward")
        assert node.saved_tensors[-1].shape[0] == kept, (block, group)
    assert ss.small_group(16, 2) == 1  # batch 32, d_inner 256, N 16: a state per block
    assert ss.small_group(64, 1) == 8  # N 64, one token per block: 64 / 8 = 8 per token
    assert ss.small_group(32, 2) == 2
    for n in (1, 16, 33, 64, 256):
        for t in (1, 2, 3, 16):
            g = ss.small_group(n, t)
            assert n / (t * g) <= ss.SMALL_KEPT_PER_TOKEN and (g == 1 or n / (t * (g - 1))
                                                                > ss.SMALL_KEPT_PER_TOKEN)


@pytest.mark.parametrize("form", ["shared", "time_invariant"])
def test_small_gradient_of_the_final_state_alone(form):
    """Only h_L is used: the output's gradient reaches the backward as None."""
    u, delta, A, B, C, D, z, bias, h0 = _inputs(form, True, torch.float64, 9)
    leaves = [u, delta, A, B, bias, h0]  # C, D and z do not reach h_L
    grads = []
    for fn in (selective_scan_small, selective_scan_recurrent_ref):
        kw = {"block_size": 4} if fn is selective_scan_small else {}
        _, h = fn(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0, **kw)
        grads.append(torch.autograd.grad(h.sin().sum(), leaves))
    for g, w in zip(*grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("form", ["shared", "grouped", "time_invariant"])
def test_small_scan_core_gradcheck(form):
    g = torch.Generator().manual_seed(1)
    f64 = dict(dtype=torch.float64)
    b, G, E, L, N = 2, 2, 3, 11, 4
    u = torch.randn(b, G, E, L, generator=g, **f64).requires_grad_()
    delta = (torch.rand(b, G, E, L, generator=g, **f64) + 0.1).requires_grad_()
    A = (-torch.rand(G, E, N, generator=g, **f64) - 0.1).requires_grad_()
    shape = {"shared": (b, 1, 1, L, N), "grouped": (b, G, 1, L, N),
             "time_invariant": (1, G, E, 1, N)}[form]
    B = torch.randn(*shape, generator=g, **f64).requires_grad_()
    C = torch.randn(*shape, generator=g, **f64).requires_grad_()
    h0 = torch.randn(b, G, E, N, generator=g, **f64).requires_grad_()
    # blocks of 4: 11 tokens make 3 blocks, the last one short; then 2 blocks per kept state
    for group in (1, 2):
        assert torch.autograd.gradcheck(lambda *t, g=group: small_scan_core(*t, block_size=4,
                                                                            group=g),
                                        (u, delta, A, B, C, h0))


def _nodes(y) -> list:
    """The autograd nodes behind y, one of each type."""
    seen, out, todo = set(), [], [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and type(fn).__name__ not in seen:
            seen.add(type(fn).__name__)
            out.append(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return out


def _scan_node_names(y) -> set[str]:
    return {type(f).__name__ for f in _nodes(y)}


def test_dispatch_by_state_size(monkeypatch):
    """Small (B, D, N) states take the small path; above SMALL_SLICE_ELEMENTS the lean one."""
    u, delta, A, B, C, D, z, bias, _ = scan_inputs("shared", False)
    want = selective_scan_recurrent_ref(u, delta, A, B, C, D, z, bias, True)
    y = selective_scan(u, delta, A, B, C, D, z, bias, True)
    torch.testing.assert_close(y, want, atol=1e-4, rtol=1e-4)
    assert "_SmallSelectiveScanBackward" in _scan_node_names(y)
    slice_numel = u.shape[0] * u.shape[1] * A.shape[1]
    monkeypatch.setattr(ss, "SMALL_SLICE_ELEMENTS", slice_numel - 1)
    y = selective_scan(u, delta, A, B, C, D, z, bias, True)
    torch.testing.assert_close(y, want, atol=1e-4, rtol=1e-4)
    assert "_LeanSelectiveScanBackward" in _scan_node_names(y)


def test_large_states_of_a_cpu_batch_take_the_small_path():
    """Batch 32, d_inner 128, N 64: a 2^18-element state, where the lean path measured ~10x
    slower (docs/bench/speed.md); the dispatch takes the small path, with groups of blocks."""
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(32, 128, 3, generator=g), torch.randn(32, 128, 3, generator=g)
    A = -torch.rand(128, 64, generator=g).requires_grad_()
    B, C = torch.randn(32, 64, 3, generator=g), torch.randn(32, 64, 3, generator=g)
    y = selective_scan(u, delta, A, B, C, delta_softplus=True)
    assert "_SmallSelectiveScanBackward" in _scan_node_names(y)
    assert ss.small_group(64, ss.small_block_size(u, 64)) == 8


def test_block_size_follows_the_element_budget():
    u = torch.zeros(32, 64, 128)
    assert ss.small_block_size(u, 16) == ss.SMALL_BLOCK_ELEMENTS // (32 * 64 * 16)
    assert ss.small_block_size(torch.zeros(1, 4, 3), 2) == 3  # never more than L
    assert ss.small_block_size(torch.zeros(64, 4096, 8), 16) == 1  # never less than one


def test_small_rejects_bad_block_size():
    u, delta, A, B, C, *_ = scan_inputs("shared", False)
    with pytest.raises(ValueError, match="block_size"):
        selective_scan_small(u, delta, A, B, C, block_size=0)
    with pytest.raises(ValueError, match="group"):
        selective_scan_small(u, delta, A, B, C, group=0)
