"""Forgetting attention on PyTorch's fused CPU flash-attention kernel (the decay bias folded into
two extra q/k columns) against the quadratic and recurrent oracles: outputs and gradients, with
and without a KV cache, several query blocks, float64 gradcheck, and the CPU dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrm.ops.forgetting_attn import (
    forgetting_attn,
    forgetting_attn_fused,
    forgetting_attn_quadratic_ref,
    forgetting_attn_recurrent_ref,
)


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
