"""Every op in float64: the fast reference equals its token-by-token oracle to round-off, and
``torch.autograd.gradcheck`` passes on tiny sizes (the chunked paths at lengths that are not a
multiple of the chunk).

The compute-dtype rule (``lrm.dtypes``) says that a float64 input is computed in float64. An op
that casts to fp32 anywhere (a bare ``.float()``, a constant built in fp32, an fp32 state)
agrees with its oracle only to about 1e-7 and fails here; so does a chunked path that is wrong
by a round-off-sized amount, which fp32 tolerances hide.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from lrm.dtypes import compute_dtype, promote
from lrm.nn import RMSNorm, rope
from lrm.ops import ssm_conv as sc
from lrm.ops.causal_conv import causal_conv1d_recurrent_ref, causal_conv1d_ref
from lrm.ops.delta_rule import (
    gated_delta_rule_recurrent_ref,
    gated_delta_rule_ref,
    gdn2_recurrent_ref,
    gdn2_ref,
)
from lrm.ops.forgetting_attn import (
    forgetting_attn_quadratic_ref,
    forgetting_attn_recurrent_ref,
    forgetting_attn_ref,
)
from lrm.ops.hippo import diag_init, discretize_diag, discretize_dplr, nplr_legs, to_real
from lrm.ops.longmamba import LongMambaConfig, LongMambaFilter, channel_statistics
from lrm.ops.selective_scan import selective_scan_recurrent_ref, selective_scan_ref
from lrm.ops.ssd import ssd_recurrent_ref, ssd_ref

F64 = torch.float64
TOL = 1e-12  # relative, in the max norm: a few hundred ulps of float64


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


def rand(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_f64_close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    """max|a − b| <= tol · max|b|, both float64 (or complex128)."""
    assert a.dtype == b.dtype and a.dtype in (F64, torch.complex128), (a.dtype, b.dtype)
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1e-300)
    assert err <= tol * scale, f"relative error {err / scale:.2e} > {tol:.0e}"


def check_grad(fn, *inputs: torch.Tensor) -> None:
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point() or t.is_complex())
              for t in inputs]
    assert gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=False)


# ----------------------------------------------------------------------------- the helper


def test_compute_dtype_rule():
    bf, f32 = torch.ones(1, dtype=torch.bfloat16), torch.ones(1)
    assert compute_dtype(bf) == torch.float32 and compute_dtype(bf, None) == torch.float32
    assert compute_dtype(f32) == torch.float32 and compute_dtype(bf, f32.double()) == F64
    assert compute_dtype(torch.ones(1, dtype=torch.long)) == torch.float32
    assert promote(None) == promote(torch.bfloat16) == torch.float32 and promote(F64) == F64


# ----------------------------------------------------------------------------- selective scan


def _scan_inputs(L: int, grouped: bool):
    Bsz, D, N = 2, 4, 3
    u, delta, z = rand(Bsz, D, L, seed=1), rand(Bsz, D, L, seed=2), rand(Bsz, D, L, seed=3)
    A = -torch.exp(rand(D, N, seed=4))
    shape = (Bsz, 2, N, L) if grouped else (Bsz, N, L)
    B, C = rand(*shape, seed=5), rand(*shape, seed=6)
    Dskip, bias, h0 = rand(D, seed=7), rand(D, seed=8), rand(Bsz, D, N, seed=9)
    return u, delta, A, B, C, Dskip, z, bias, h0


@pytest.mark.parametrize("grouped", [False, True])
def test_selective_scan_ref_equals_recurrent_ref(grouped):
    u, delta, A, B, C, Dskip, z, bias, h0 = _scan_inputs(37, grouped)
    kw = dict(delta_bias=bias, delta_softplus=True, return_final_state=True, initial_state=h0)
    y, h = selective_scan_ref(u, delta, A, B, C, Dskip, z, chunk_size=8, **kw)
    y_ref, h_ref = selective_scan_recurrent_ref(u, delta, A, B, C, Dskip, z, **kw)
    assert_f64_close(y, y_ref)
    assert_f64_close(h, h_ref)


def test_selective_scan_gradcheck():
    inputs = _scan_inputs(7, grouped=False)

    def fn(u, delta, A, B, C, Dskip, z, bias, h0):
        y, h = selective_scan_ref(u, delta, A, B, C, Dskip, z, bias, True, True, h0,
                                  chunk_size=3)  # 7 = 3 + 3 + 1
        return y, h

    check_grad(fn, *inputs)


# ----------------------------------------------------------------------------- SSD


def _ssd_inputs(L: int):
    Bsz, H, P, G, N = 2, 4, 3, 2, 5
    x, dt, z = rand(Bsz, L, H, P, seed=1), rand(Bsz, L, H, seed=2), rand(Bsz, L, H, P, seed=3)
    A = -torch.exp(rand(H, seed=4))
    B, C = rand(Bsz, L, G, N, seed=5), rand(Bsz, L, G, N, seed=6)
    D, dt_bias, h0 = rand(H, seed=7), rand(H, seed=8), rand(Bsz, H, P, N, seed=9)
    return x, dt, A, B, C, D, z, dt_bias, h0


def test_ssd_ref_equals_recurrent_ref():
    x, dt, A, B, C, D, z, dt_bias, h0 = _ssd_inputs(37)
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

    check_grad(fn, *_ssd_inputs(7))


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


# ----------------------------------------------------------------------------- causal conv


def test_causal_conv_ref_equals_recurrent_ref():
    x, w, b, s = rand(2, 5, 37, seed=1), rand(5, 4, seed=2), rand(5, seed=3), rand(2, 5, 3, seed=4)
    y, st = causal_conv1d_ref(x, w, b, "silu", s)
    y_ref, st_ref = causal_conv1d_recurrent_ref(x, w, b, "silu", s)
    assert_f64_close(y, y_ref)
    assert_f64_close(st, st_ref)


def test_causal_conv_gradcheck():
    def fn(x, w, b, s):
        return causal_conv1d_ref(x, w, b, "silu", s)[0]

    check_grad(fn, rand(2, 3, 7, seed=1), rand(3, 4, seed=2), rand(3, seed=3),
               rand(2, 3, 3, seed=4))


# ----------------------------------------------------------------------------- SSM filters


H, N = 3, 8


def _dt() -> torch.Tensor:
    u = torch.rand(H, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    return torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))


def _cplx(*shape: int, seed: int) -> torch.Tensor:
    return torch.complex(rand(*shape, seed=seed), rand(*shape, seed=seed + 100))


def _diag_system(method: str):
    A, B = (t.expand(H, -1).clone() for t in diag_init("legs", N))
    C = _cplx(H, N // 2, seed=1)
    return _dt(), A, B, C, method


def _dplr_system():
    Lam, P, B, _ = nplr_legs(N)
    Lam, P, B = (t.expand(H, -1).clone() for t in (Lam, P, B))
    P = P + 0.2 * _cplx(H, N // 2, seed=2)  # as after training
    return _dt(), Lam, P, B, _cplx(H, N // 2, seed=3)


def _impulse(L: int) -> torch.Tensor:
    u = torch.zeros(1, H, L, dtype=F64)
    u[..., 0] = 1.0
    return u


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_s4d_filter_equals_recurrence(method):
    dt, A, B, C, method = _diag_system(method)
    dA, dB = discretize_diag(dt, A, B, method)
    y, _ = sc.ssm_conv_recurrent_ref(_impulse(37), dA, dB, 2 * C)
    assert_f64_close(sc.s4d_filter(dt, A, B, C, 37, method), y[0])


@pytest.mark.parametrize("L", [37, 64])  # 64: the Nyquist node ω = −1
def test_s4_filter_equals_recurrence(L):
    dt, Lam, P, B, C = _dplr_system()
    dA, dB = discretize_dplr(dt, Lam, P, B)
    c = to_real(2 * C.conj())
    c_tilde = c - torch.einsum("hn,hnm->hm", c, torch.linalg.matrix_power(dA, L))
    Ct = torch.complex(*(c_tilde / 2).chunk(2, dim=-1)).conj()  # back to the half basis
    y, _ = sc.ssm_conv_recurrent_ref(_impulse(L), dA, dB, c)
    assert_f64_close(sc.s4_filter(dt, Lam, P, B, Ct, L), y[0], tol=1e-10)


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_ssm_conv_ref_equals_recurrent_ref(kind):
    if kind == "diag":
        dt, A, B, C, _ = _diag_system("zoh")
        dA, dB = discretize_diag(dt, A, B)
        dC, x0 = 2 * C, _cplx(2, H, N // 2, seed=4)
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

    x0 = _cplx(2, H, N // 2, seed=6)
    leaves = (dt, A.real, A.imag, B.real, B.imag, C.real, C.imag, P.real, P.imag,
              rand(2, H, L, seed=7), x0.real, x0.imag)
    check_grad(fn, *leaves)


# ----------------------------------------------------------------------------- lrm.nn


def test_rope_in_float64_is_the_exact_rotation():
    """RoPE at a large offset: angles formed in fp32 would be off by ~1e-3 rad there."""
    x, offset, base = rand(1, 2, 5, 8, seed=1), 1_000_003, 10000.0
    y = rope(x, offset + torch.arange(5), base)
    ref = torch.empty_like(x)
    for t in range(5):
        for i in range(4):
            ang = (offset + t) * base ** (-2 * i / 8)
            c, s = math.cos(ang), math.sin(ang)
            ref[..., t, i] = x[..., t, i] * c - x[..., t, i + 4] * s
            ref[..., t, i + 4] = x[..., t, i] * s + x[..., t, i + 4] * c
    assert_f64_close(y, ref, tol=1e-9)  # math.cos of an angle ~1e6 is itself good to ~1e-10


@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_grouped_gated_rmsnorm_in_float64(norm_before_gate):
    x, z = rand(2, 3, 12, seed=1), rand(2, 3, 12, seed=2)
    norm = RMSNorm(12, eps=1e-5, group_size=4, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.copy_(rand(12, seed=3))
    y = norm(x, z)
    ref, w = torch.empty_like(x), norm.weight.detach().tolist()
    for b in range(2):
        for t in range(3):
            gate = [v / (1 + math.exp(-v)) for v in z[b, t].tolist()]
            xs = x[b, t].tolist()
            if not norm_before_gate:
                xs = [a * g for a, g in zip(xs, gate, strict=True)]
            for g0 in range(0, 12, 4):
                rms = math.sqrt(math.fsum(v * v for v in xs[g0:g0 + 4]) / 4 + 1e-5)
                for c in range(g0, g0 + 4):
                    out = xs[c] / rms * w[c]
                    ref[b, t, c] = out * gate[c] if norm_before_gate else out
    assert y.dtype == F64
    assert_f64_close(y, ref)
    check_grad(lambda x, z: norm(x, z), x, z)


# ----------------------------------------------------------------------------- LongMamba


def _statistics_loop(delta: torch.Tensor, a: torch.Tensor, clamp_top: float,
                     target_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """LongMamba's calibration statistics channel by channel, with plain Python loops."""
    C, T_tr = delta.shape
    scores, thetas = [], [[] for _ in target_lens]
    for c in range(C):
        d = [float(v) for v in delta[c]]
        k = max(1, int(T_tr * clamp_top))
        ceiling = sorted(d, reverse=True)[k - 1]
        d = [min(v, ceiling) for v in d]
        budget = math.fsum(d)
        scores.append(math.exp(float(a[c]) * budget))
        prof = sorted(d, reverse=True)
        for i, T in enumerate(target_lens):
            # linear interpolation of the sorted profile onto T points (half-pixel centres)
            stretched = []
            for j in range(T):
                src = max((j + 0.5) * T_tr / T - 0.5, 0.0)
                lo = min(int(src), T_tr - 1)
                hi = min(lo + 1, T_tr - 1)
                stretched.append(prof[lo] + (src - lo) * (prof[hi] - prof[lo]))
            run, first = 0.0, 0
            for j, v in enumerate(stretched):
                run += v
                if run > budget:
                    first = j
                    break
            thetas[i].append(stretched[min(first + 1, T - 1)])
    return torch.tensor(scores, dtype=F64), torch.tensor(thetas, dtype=F64)


def test_longmamba_statistics_equal_a_loop():
    delta = F.softplus(rand(6, 16, seed=1) - 2)
    a = -torch.exp(rand(6, seed=2))
    lens = [24, 32, 48]
    score, theta = channel_statistics(delta, a, 0.1, lens)
    score_ref, theta_ref = _statistics_loop(delta, a, 0.1, lens)
    assert_f64_close(score, score_ref)
    assert_f64_close(theta, theta_ref)


def test_longmamba_filter_gradcheck():
    f = LongMambaFilter(4, LongMambaConfig(length_factors=(2.0,))).double()
    a = -torch.exp(rand(4, seed=3)) / 8
    f.start_calibration(8)
    f(F.softplus(rand(3, 4, 8, seed=4)), a)
    f.finish_calibration()
    delta = F.softplus(rand(2, 4, 16, seed=5))
    out = f(delta, a)
    assert out.dtype == F64 and (out == 0).any() and (out == delta).any(), "filter is idle"
    check_grad(lambda d: f(d, a), delta)
