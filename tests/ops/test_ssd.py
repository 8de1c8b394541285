"""The SSD op of Mamba-2 (lrm.ops.ssd): the chunked reference against the recurrence (fp32 and
float64), gradcheck, its memory, the lean path, dispatch and the kernel on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_f64_close, assert_lean_same, check_grad, gen, rand, saved_numel

from lrm.ops.ssd import ssd, ssd_lean, ssd_recurrent_ref, ssd_ref

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


TOL = dict(atol=1e-4, rtol=1e-4)


def _grads(out, inputs):
    y, h = out
    loss = (y * torch.cos(y)).sum() + h.sin().sum()  # non-trivial weights on every output
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


# ----------------------------------------------------------------------------- SSD


def _ssd_inputs(with_state: bool, D_shape: str, L: int = 37, b: int = 2, H: int = 4, P: int = 3,
                G: int = 2, N: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).requires_grad_()

    x, dt = r(b, L, H, P), r(b, L, H)
    A = (-torch.rand(H, generator=g) * 4 - 0.1).requires_grad_()
    B, C = r(b, L, G, N), r(b, L, G, N)
    D = r(H) if D_shape == "H" else r(H, P)
    z, dt_bias = r(b, L, H, P), r(H)
    h0 = r(b, H, P, N) if with_state else None
    return x, dt, A, B, C, D, z, dt_bias, h0


@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_ssd_ref_equals_recurrence(with_state, chunk):
    x, dt, A, B, C, D, z, dt_bias, h0 = inputs = _ssd_inputs(with_state, "HP" if chunk % 2 else "H")
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    fast = ssd_ref(x, dt, A, B, C, chunk, **kw)
    slow = ssd_recurrent_ref(x, dt, A, B, C, chunk, **kw)
    torch.testing.assert_close(fast[0], slow[0], **TOL)
    torch.testing.assert_close(fast[1], slow[1], **TOL)
    for gf, gs in zip(_grads(fast, inputs), _grads(slow, inputs), strict=True):
        torch.testing.assert_close(gf, gs, atol=1e-3, rtol=1e-4)


def test_ssd_dt_limit_and_dispatch_on_cpu():
    x, dt, A, B, C, D, _, dt_bias, _ = _ssd_inputs(False, "H")
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.05, 0.5))
    y = ssd_ref(x, dt, A, B, C, 16, **kw)
    torch.testing.assert_close(y, ssd_recurrent_ref(x, dt, A, B, C, **kw), **TOL)
    assert not torch.allclose(y, ssd_ref(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias,
                                         dt_softplus=True))
    torch.testing.assert_close(ssd(x, dt, A, B, C, 16, **kw), y)
    with pytest.raises(RuntimeError, match="kernel"):
        ssd(x, dt, A, B, C, 16, backend="kernel")


def test_ssd_ref_memory_is_linear_in_length():
    def run(L):
        x, dt, A, B, C, *_ = _ssd_inputs(False, "H", L=L, b=1, H=4, P=8, G=1, N=8)
        return saved_numel(lambda: ssd_ref(x, dt, A, B, C, 32, dt_softplus=True))

    small, big = run(512), run(1024)
    assert big < 2.2 * small  # an (L, L) mask would quadruple
    assert big < 1024 * 1024  # and never the (L, L) matrix itself


# ----------------------------------------------------------------------------- CUDA kernels

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_ssd_kernel_equals_ref():
    from lrm.ops import _kernels

    if _kernels.get("mamba_chunk_scan_combined") is None:
        pytest.fail("mamba-ssm's mamba_chunk_scan_combined does not import on this machine")
    x, dt, A, B, C, D, z, dt_bias, h0 = (
        t.detach().cuda().requires_grad_()
        for t in _ssd_inputs(True, "H", L=301, H=8, P=16, G=2, N=16))
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    k = ssd(x, dt, A, B, C, 64, **kw, backend="kernel")
    r = ssd_ref(x, dt, A, B, C, 64, **kw)
    torch.testing.assert_close(k[0], r[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(k[1], r[1], atol=1e-3, rtol=1e-3)
    inputs = (x, dt, A, B, C, D, z, dt_bias, h0)
    gk = torch.autograd.grad(k[0].square().sum() + k[1].square().sum(), inputs)
    gr = torch.autograd.grad(r[0].square().sum() + r[1].square().sum(), inputs)
    for a, b in zip(gk, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-3)


# ----------------------------------------------------------------------------- SSD


def _f64_ssd_inputs(L: int):
    Bsz, H, P, G, N = 2, 4, 3, 2, 5
    x, dt, z = rand(Bsz, L, H, P, seed=1), rand(Bsz, L, H, seed=2), rand(Bsz, L, H, P, seed=3)
    A = -torch.exp(rand(H, seed=4))
    B, C = rand(Bsz, L, G, N, seed=5), rand(Bsz, L, G, N, seed=6)
    D, dt_bias, h0 = rand(H, seed=7), rand(H, seed=8), rand(Bsz, H, P, N, seed=9)
    return x, dt, A, B, C, D, z, dt_bias, h0


def test_ssd_ref_equals_recurrent_ref():
    x, dt, A, B, C, D, z, dt_bias, h0 = _f64_ssd_inputs(37)
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    y, h = ssd_ref(x, dt, A, B, C, 8, **kw)
    y_ref, h_ref = ssd_recurrent_ref(x, dt, A, B, C, **kw)
    assert_f64_close(y, y_ref)
    assert_f64_close(h, h_ref)


def test_ssd_gradcheck():
    def fn(x, dt, A, B, C, D, z, dt_bias, h0):
        return ssd_ref(x, dt, A, B, C, 3, D=D, z=z, dt_bias=dt_bias, initial_state=h0,
                       dt_softplus=True, return_final_state=True)

    check_grad(fn, *_f64_ssd_inputs(7))


# ----------------------------------------------------------------------------- SSD


def _lean_ssd_inputs(with_state: bool, L: int = 37, b: int = 2, H: int = 4, P: int = 3, G: int = 2,
                N: int = 5):
    g = gen()

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
    x, dt, A, B, C, D, z, dt_bias, h0 = _lean_ssd_inputs(with_state)
    if not options:
        D = z = dt_bias = None
    inputs = (x, dt, A, B, C, D, z, dt_bias, h0)
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    lean = ssd_lean(x, dt, A, B, C, 4, block_size=8, **kw)  # 5 blocks, the last one short
    assert_lean_same(lean, ssd_ref(x, dt, A, B, C, 4, **kw), inputs)
    assert_lean_same(lean, ssd_recurrent_ref(x, dt, A, B, C, **kw), inputs)


def test_ssd_lean_keeps_less_than_the_reference_and_dispatch_uses_it(monkeypatch):
    x, dt, A, B, C, *_ = _lean_ssd_inputs(False, L=1024, b=1, H=4, P=8, G=1, N=8)
    lean = saved_numel(lambda: ssd_lean(x, dt, A, B, C, 64, block_size=128, dt_softplus=True))
    ref = saved_numel(lambda: ssd_ref(x, dt, A, B, C, 64, dt_softplus=True))
    inputs = x.numel() + dt.numel() + B.numel() + C.numel()
    states = (1024 // 128 + 1) * 4 * 8 * 8
    assert lean <= 2 * inputs + states + A.numel(), (lean, inputs, states)
    assert lean < ref / 3, (lean, ref)
    monkeypatch.setattr("lrm.ops.ssd.SMALL_ELEMENTS", 0)  # beyond the small-shape limit
    y = ssd(x, dt, A, B, C, 64, dt_softplus=True)
    assert "BlockRecompute" in type(y.grad_fn).__name__
