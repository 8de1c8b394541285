"""The S4/S4D ops (lrm.ops.hippo, lrm.ops.ssm_conv): HiPPO, discretisation, the Vandermonde and
Cauchy filters against the recurrence, the FFT convolution, the state paths against their
token-by-token oracle (fp32 and float64), gradcheck and dispatch.
"""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import F64, assert_f64_close, check_grad, rand

from lrm.ops import hippo as hp
from lrm.ops import ssm_conv as sc
from lrm.ops.hippo import diag_init, discretize_diag, discretize_dplr, nplr_legs, to_real

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


H = 3


def _dt(h: int = H, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(h, 1, generator=g)
    return torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))  # (H, 1)


def _cplx(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g))


def _impulse(L: int, h: int = H) -> torch.Tensor:
    u = torch.zeros(1, h, L)
    u[..., 0] = 1.0
    return u


def _dplr(N: int, seed: int = 0, perturb: float = 0.0):
    """HiPPO-LegS DPLR parameters for H channels (optionally perturbed, as after training)."""
    Lam, P, B, _ = hp.nplr_legs(N)
    Lam, P, B = (t.to(torch.complex64).expand(H, -1).clone() for t in (Lam, P, B))
    if perturb:
        Lam = Lam + perturb * _cplx(H, N // 2, seed=seed + 1).real.abs().neg()
        P = P + perturb * _cplx(H, N // 2, seed=seed + 2)
    return Lam, P, B


# ----------------------------------------------------------------------------- HiPPO


@pytest.mark.parametrize("N", [4, 16, 64])
def test_nplr_reconstructs_hippo_legs(N):
    A, B = hp.hippo_legs(N)
    assert torch.allclose(torch.linalg.eigvals(A).real.sort().values,
                          -torch.arange(N, 0, -1, dtype=torch.float64))
    Lam, P, Bt, V = hp.nplr_legs(N, B_clip=None)
    assert torch.allclose(Lam.real, torch.full_like(Lam.real, -0.5)) and (Lam.imag < 0).all()
    Vf = torch.cat([V, V.conj()], dim=1)
    assert torch.allclose(Vf.conj().T @ Vf, torch.eye(N, dtype=Vf.dtype), atol=1e-10)
    A_rec = Vf @ hp.dplr_dense(Lam[None], P[None])[0] @ Vf.conj().T
    torch.testing.assert_close(A_rec, A.to(A_rec.dtype), atol=1e-9, rtol=0)
    torch.testing.assert_close(Vf @ hp.conj_full(Bt), B.to(Vf.dtype), atol=1e-9, rtol=0)
    # B_clip only touches Im B
    _, _, Bc, _ = hp.nplr_legs(N, B_clip=2.0)
    assert torch.equal(Bc.real, Bt.real) and Bc.imag.abs().max() <= 2.0


def test_diag_inits():
    N = 8
    A, _ = hp.diag_init("lin", N)
    torch.testing.assert_close(A.imag, -math.pi * torch.arange(N // 2, dtype=torch.float64))
    A, _ = hp.diag_init("real", N)
    torch.testing.assert_close(A.real, -torch.arange(1, N // 2 + 1, dtype=torch.float64))
    A, _ = hp.diag_init("inv", N)
    torch.testing.assert_close(A.imag[0], torch.tensor(-(N / math.pi) * (N - 1),
                                                       dtype=torch.float64))
    A, B = hp.diag_init("legs", N)
    Lam, _, Bn, _ = hp.nplr_legs(N)
    assert torch.equal(A, Lam) and torch.equal(B, Bn)
    with pytest.raises(ValueError, match="init"):
        hp.diag_init("nope", N)


# ----------------------------------------------------------------------------- SSM filters


@pytest.mark.parametrize("init", hp.DIAG_INITS)
@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize(("N", "L"), [(4, 1), (16, 37), (64, 129)])
def test_vandermonde_filter_equals_recurrence(init, method, N, L):
    A, B = (t.to(torch.complex64).expand(H, -1) for t in hp.diag_init(init, N))
    C, dt = _cplx(H, N // 2), _dt()
    K = sc.s4d_filter(dt, A, B, C, L, method)
    dA, dB = hp.discretize_diag(dt, A, B, method)
    y, _ = sc.ssm_conv_recurrent_ref(_impulse(L), dA, dB, 2 * C)
    torch.testing.assert_close(K, y[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("N", "L"), [(4, 37), (16, 101), (64, 129), (16, 64)])  # 64: ω = −1
@pytest.mark.parametrize("perturb", [0.0, 0.3])
def test_cauchy_filter_equals_recurrence(N, L, perturb):
    Lam, P, B = _dplr(N, perturb=perturb)
    C, dt = _cplx(H, N // 2), _dt()
    dA, dB = hp.discretize_dplr(dt.double(), *(t.to(torch.complex128) for t in (Lam, P, B)))
    c = hp.to_real(2 * C.conj()).double()  # y = 2 Re(Cᵀx) = c·[Re x, Im x]
    # C̃ᵀ = Cᵀ (I − Ā^L): the truncation of the generating function to L taps
    c_tilde = c - torch.einsum("hn,hnm->hm", c, torch.linalg.matrix_power(dA, L))
    Ct = hp.from_real(c_tilde / 2).conj().to(torch.complex64)
    K = sc.s4_filter(dt, Lam, P, B, Ct, L)
    y, _ = sc.ssm_conv_recurrent_ref(_impulse(L).double(), dA, dB, c)
    torch.testing.assert_close(K, y[0].float(), atol=1e-5, rtol=1e-4)


def test_dplr_real_form_is_the_full_basis_matrix():
    """[Re x, Im x] coordinates and the full basis [x, conj x] describe the same operator."""
    N = 8
    Lam, P, _ = _dplr(N, perturb=0.3)
    x = _cplx(H, N // 2, seed=9)
    full = torch.einsum("hmn,hn->hm", hp.dplr_dense(Lam, P), hp.conj_full(x))[:, : N // 2]
    real = torch.einsum("hmn,hn->hm", hp.dplr_real(Lam, P), hp.to_real(x))
    torch.testing.assert_close(hp.from_real(real), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("L", [37, 64])
def test_dplr_filter_equals_diagonal_filter_without_low_rank(L):
    N = 16
    A = _cplx(H, N // 2, seed=3)
    A = torch.complex(-A.real.abs() - 0.1, A.imag)
    B, C, dt = _cplx(H, N // 2, seed=4), _cplx(H, N // 2, seed=5), _dt()
    dA, _ = hp.discretize_diag(dt, A, B, "bilinear")
    Ct = (1 - dA**L) * C  # C̃ for a diagonal Ā
    K_dplr = sc.s4_filter(dt, A, torch.zeros_like(A), B, Ct, L)
    K_diag = sc.s4d_filter(dt, A, B, C, L, "bilinear")
    torch.testing.assert_close(K_dplr, K_diag, atol=1e-5, rtol=1e-4)


def test_filters_chunked_equal_unchunked_with_gradients(monkeypatch):
    """The chunked sums (with recomputation in backward) give the same values and gradients."""
    N, L = 8, 50
    Lam, P, B = _dplr(N, perturb=0.2)
    C, dt = _cplx(H, N // 2), _dt()

    def run():
        leaves = [t.clone().requires_grad_(True) for t in (dt, Lam, P, B, C)]
        k = sc.s4_filter(*leaves, L) + sc.s4d_filter(leaves[0], leaves[1], leaves[3],
                                                     leaves[4], L)
        (k * torch.linspace(-1, 1, L)).sum().backward()
        return k.detach(), [t.grad for t in leaves]

    k_one, g_one = run()
    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 7 * H * N)  # many chunks of 7 taps/nodes
    k_many, g_many = run()
    torch.testing.assert_close(k_many, k_one, atol=1e-6, rtol=1e-5)
    for a, b in zip(g_many, g_one, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fft_conv_is_causal_convolution_without_wrap():
    g = torch.Generator().manual_seed(0)
    u, k = torch.randn(2, H, 23, generator=g), torch.randn(H, 23, generator=g)
    direct = torch.stack([(k[:, : t + 1].flip(-1) * u[..., : t + 1]).sum(-1)
                          for t in range(23)], dim=-1)
    torch.testing.assert_close(sc.fft_conv(u, k), direct, atol=1e-5, rtol=1e-5)


def test_dplr_step_is_the_bilinear_step():
    N = 16
    Lam, P, B = _dplr(N, perturb=0.3)
    dt, x, u = _dt(), _cplx(2, H, N // 2), torch.randn(2, H)
    dA, dB = hp.discretize_dplr(dt, Lam, P, B)
    dense = torch.einsum("hmn,bhn->bhm", dA, hp.to_real(x)) + dB * u[..., None]
    torch.testing.assert_close(hp.dplr_step(x, u, dt, Lam, P, B), hp.from_real(dense),
                               atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the op


def _system(kind: str, N: int):
    """Leaf parameters and a function building (dA, dB, dC) from them."""
    dt = _dt()
    if kind == "diag":
        A, B = (t.to(torch.complex64).expand(H, -1).clone() for t in hp.diag_init("lin", N))
        leaves = [dt, A, B, _cplx(H, N // 2)]

        def build(dt, A, B, C):
            return (*hp.discretize_diag(dt, A, B, "zoh"), 2 * C)
    else:
        leaves = [dt, *_dplr(N, perturb=0.2), _cplx(H, N // 2)]

        def build(dt, Lam, P, B, C):
            return (*hp.discretize_dplr(dt, Lam, P, B), hp.to_real(2 * C.conj()))
    return leaves, build


@pytest.mark.parametrize("kind", ["diag", "dense"])
@pytest.mark.parametrize("L", [1, 2, 37, 150])  # 150 > DENSE_BLOCK: several time blocks
@pytest.mark.parametrize("with_state", [False, True])
def test_ssm_conv_ref_equals_recurrent_ref(kind, L, with_state):
    N = 8
    leaves, build = _system(kind, N)
    g = torch.Generator().manual_seed(7)
    u = torch.randn(2, H, L, generator=g)
    x0 = 0.5 * _cplx(2, H, N // 2, seed=8) if with_state else None
    if x0 is not None and kind == "dense":
        x0 = hp.to_real(x0)  # the dense form runs on real coordinates

    def run(fn):
        ps = [t.clone().requires_grad_(True) for t in leaves]
        ui = u.clone().requires_grad_(True)
        xi = None if x0 is None else x0.clone().requires_grad_(True)
        y, x = fn(ui, *build(*ps), xi)
        (y * torch.cos(torch.arange(L))).sum().backward(inputs=[ui, *ps] + ([xi] if xi is not None
                                                                            else []),
                                                        retain_graph=True)
        grads = [ui.grad, *(p.grad for p in ps)] + ([xi.grad] if xi is not None else [])
        return y.detach(), x.detach(), grads

    y_ref, x_ref, g_ref = run(sc.ssm_conv_recurrent_ref)
    y, x, grads = run(sc.ssm_conv_ref)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(x, x_ref, atol=2e-5, rtol=1e-4)
    for a, b in zip(grads, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_ssm_conv_dispatch():
    leaves, build = _system("diag", 4)
    u = torch.randn(1, H, 5)
    y, _ = sc.ssm_conv(u, *build(*leaves))
    torch.testing.assert_close(y, sc.ssm_conv_ref(u, *build(*leaves))[0])
    with pytest.raises(RuntimeError, match="no kernel"):
        sc.ssm_conv(u, *build(*leaves), backend="kernel")
    with pytest.raises(ValueError, match="state must be"):
        sc.ssm_conv(u, *build(*leaves), torch.zeros(1, H, 3, dtype=torch.complex64))


# ----------------------------------------------------------------------------- in float64


N = 8  # (H = 3 as above)


def _f64_dt() -> torch.Tensor:
    u = torch.rand(H, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    return torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))


def _f64_cplx(*shape: int, seed: int) -> torch.Tensor:
    return torch.complex(rand(*shape, seed=seed), rand(*shape, seed=seed + 100))


def _diag_system(method: str):
    A, B = (t.expand(H, -1).clone() for t in diag_init("legs", N))
    C = _f64_cplx(H, N // 2, seed=1)
    return _f64_dt(), A, B, C, method


def _dplr_system():
    Lam, P, B, _ = nplr_legs(N)
    Lam, P, B = (t.expand(H, -1).clone() for t in (Lam, P, B))
    P = P + 0.2 * _f64_cplx(H, N // 2, seed=2)  # as after training
    return _f64_dt(), Lam, P, B, _f64_cplx(H, N // 2, seed=3)


def _f64_impulse(L: int) -> torch.Tensor:
    u = torch.zeros(1, H, L, dtype=F64)
    u[..., 0] = 1.0
    return u


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_s4d_filter_equals_recurrence(method):
    dt, A, B, C, method = _diag_system(method)
    dA, dB = discretize_diag(dt, A, B, method)
    y, _ = sc.ssm_conv_recurrent_ref(_f64_impulse(37), dA, dB, 2 * C)
    assert_f64_close(sc.s4d_filter(dt, A, B, C, 37, method), y[0])


@pytest.mark.parametrize("L", [37, 64])  # 64: the Nyquist node ω = −1
def test_s4_filter_equals_recurrence(L):
    dt, Lam, P, B, C = _dplr_system()
    dA, dB = discretize_dplr(dt, Lam, P, B)
    c = to_real(2 * C.conj())
    c_tilde = c - torch.einsum("hn,hnm->hm", c, torch.linalg.matrix_power(dA, L))
    Ct = torch.complex(*(c_tilde / 2).chunk(2, dim=-1)).conj()  # back to the half basis
    y, _ = sc.ssm_conv_recurrent_ref(_f64_impulse(L), dA, dB, c)
    assert_f64_close(sc.s4_filter(dt, Lam, P, B, Ct, L), y[0], tol=1e-10)


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_ssm_conv_ref_equals_recurrent_ref_in_float64(kind):
    if kind == "diag":
        dt, A, B, C, _ = _diag_system("zoh")
        dA, dB = discretize_diag(dt, A, B)
        dC, x0 = 2 * C, _f64_cplx(2, H, N // 2, seed=4)
    else:
        dt, Lam, P, B, C = _dplr_system()
        dA, dB = discretize_dplr(dt, Lam, P, B)
        dC, x0 = to_real(2 * C.conj()), rand(2, H, N, seed=4)
    u = rand(2, H, 150, seed=5)  # 150 > the dense path's time block of 64
    y, x = sc.ssm_conv_ref(u, dA, dB, dC, x0)
    y_ref, x_ref = sc.ssm_conv_recurrent_ref(u, dA, dB, dC, x0)
    assert_f64_close(y, y_ref, tol=1e-11)
    assert_f64_close(x, x_ref, tol=1e-11)


def test_ssm_filters_gradcheck(monkeypatch):
    """Gradients through discretisation, both filters and both state paths (diagonal, dense in
    time blocks of 3), from real leaves. The Cauchy sum runs in chunks of 2 frequency nodes
    (4 nodes at L = 7), so its recomputing backward is checked too."""
    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 2 * H * N)
    dt, A, B, C, _ = _diag_system("zoh")
    _, _, P, _, _ = _dplr_system()
    L = 7

    def fn(dt, A_re, A_im, B_re, B_im, C_re, C_im, P_re, P_im, u, x0_re, x0_im):
        A, B, C = (torch.complex(a, b) for a, b in ((A_re, A_im), (B_re, B_im), (C_re, C_im)))
        P = torch.complex(P_re, P_im)
        k_diag = sc.s4d_filter(dt, A, B, C, L)
        k_dplr = sc.s4_filter(dt, A, P, B, C, L)
        dA, dB = discretize_diag(dt, A, B)
        y, x = sc.ssm_conv_ref(u, dA, dB, 2 * C, torch.complex(x0_re, x0_im))
        dA, dB = discretize_dplr(dt, A, P, B)
        x0 = to_real(torch.complex(x0_re, x0_im))
        y_dense, x_dense = sc.ssm_conv_ref(u, dA, dB, to_real(2 * C.conj()), x0, block=3)
        return k_diag, k_dplr, y, torch.view_as_real(x), y_dense, x_dense

    x0 = _f64_cplx(2, H, N // 2, seed=6)
    leaves = (dt, A.real, A.imag, B.real, B.imag, C.real, C.imag, P.real, P.imag,
              rand(2, H, L, seed=7), x0.real, x0.imag)
    check_grad(fn, *leaves)
