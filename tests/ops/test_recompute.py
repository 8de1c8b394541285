"""Block recomputation (lrm.ops.recompute): gradients through a recomputed block, in float64."""

from __future__ import annotations

import torch

from lrm.ops.recompute import block_recompute


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
