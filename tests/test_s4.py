"""S4 / S4D: the SSM filters against the recurrence, the op against its oracle, the mixers' extras.

The mixer contract itself (shapes, causality, full == chunked == token by token, ...) is checked
by tests/test_conformance.py through the variants of ``S4`` and ``S4D``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import lrm
from lrm.mixers.s4 import S4
from lrm.mixers.s4d import S4D
from lrm.ops import hippo as hp
from lrm.ops import ssm_conv as sc
from lrm.optim import param_groups

ROOT = Path(__file__).resolve().parents[1]
H = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


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


# ----------------------------------------------------------------------------- the mixers


def test_s4_filter_longer_than_l_max_continues_the_recurrence():
    """L > l_max: C̃ is extended by doubling; the filter still equals C Ā^ℓ B̄ (true C)."""
    torch.manual_seed(0)
    m = S4(4, d_state=8, l_max=8, n_ssm=None)
    with torch.no_grad():
        k = m.filter(50)  # 8 -> 16 -> 32 -> 64 taps
        dA, dB, dC = m._recurrent_form()
        y, _ = sc.ssm_conv_recurrent_ref(_impulse(50, 4), dA, dB, dC)
    torch.testing.assert_close(k, y[0], atol=1e-5, rtol=1e-4)


def test_s4_streaming_with_gradients_matches_full():
    """The state path with autograd on (no cache): same outputs and parameter gradients."""
    torch.manual_seed(0)
    m = S4(8, d_state=8, l_max=32)
    x = torch.randn(2, 20, 8)
    y_full, _ = m(x)
    g_full = torch.autograd.grad(y_full.square().sum(), list(m.parameters()))
    state, ys = m.init_state(2), []
    for s, e in [(0, 7), (7, 8), (8, 20)]:
        y, state = m(x[:, s:e], state)
        ys.append(y)
    y_str = torch.cat(ys, dim=1)
    g_str = torch.autograd.grad(y_str.square().sum(), list(m.parameters()))
    torch.testing.assert_close(y_str, y_full, atol=2e-4, rtol=1e-3)
    for a, b in zip(g_str, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_s4_recurrent_form_cache_follows_parameter_updates():
    torch.manual_seed(0)
    m = S4(4, d_state=8, l_max=16).eval()
    x = torch.randn(1, 3, 4)
    with torch.no_grad():
        y1, _ = m(x, m.init_state(1))
        m.A_imag.add_(0.5)  # an optimizer step changes the parameter in place
        y2, _ = m(x, m.init_state(1))
        y_full, _ = m(x)
    assert not torch.allclose(y1, y2)
    torch.testing.assert_close(y2, y_full, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("cls", [S4, S4D])
def test_ssm_parameters_are_tagged(cls):
    m = cls(16, d_state=4)
    tags = {n: getattr(p, "_optim", None) for n, p in m.named_parameters()}
    ssm = ["A_real", "A_imag", "B"] + (["P"] if cls is S4 else [])
    for n in ssm:
        assert tags[n] == {"lr": 0.001, "weight_decay": 0.0}, n
    assert tags["inv_dt"] == {"lr": 0.001, "weight_decay": 0.0}
    assert tags["C"] is None and tags["D"] is None and tags["output_linear.weight"] is None
    m = cls(16, d_state=4, lr_dt=None, lr_C=0.002)
    assert m.inv_dt._optim == {"weight_decay": 0.0} and m.C._optim == {"lr": 0.002}
    groups = param_groups(m, lr=0.01, weight_decay=0.05)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_id[id(m.A_real)] == (0.001, 0.0) and by_id[id(m.inv_dt)] == (0.01, 0.0)
    assert by_id[id(m.C)] == (0.002, 0.05) and by_id[id(m.output_linear.weight)] == (0.01, 0.05)


def test_s4_initial_system_is_hippo_legs():
    """At init Λ − P P* is HiPPO-LegS in the NPLR basis, and B̃ is HiPPO's B (Im clipped)."""
    m = S4(2, d_state=8)
    A = hp.dplr_dense(m._A()[:1].to(torch.complex128), m._P()[:1].to(torch.complex128))[0]
    _, _, B, V = hp.nplr_legs(8)
    Vf = torch.cat([V, V.conj()], dim=1)
    A_legs, _ = hp.hippo_legs(8)
    torch.testing.assert_close(Vf @ A @ Vf.conj().T, A_legs.to(A.dtype), atol=1e-5, rtol=0)
    torch.testing.assert_close(m._B()[0].to(torch.complex128), B, atol=1e-6, rtol=0)


# Kernels computed by state-spaces/s4 (models/s4/s4.py at e757cef, SSMKernelDiag/SSMKernelDPLR,
# backend "naive", dt_transform "softplus") for the parameters below, H=2, d_state=4, L=8.
UPSTREAM = {
    ("s4d", "zoh"): [[0.0349744, 0.0462348, 0.0567118, 0.0661701, 0.0744266, 0.0813488,
                      0.0868519, 0.0908957],
                     [-0.1398649, -0.2253240, -0.3399595, -0.3319259, -0.2209755, -0.0932724,
                      -0.0083222, 0.0268960]],
    ("s4d", "bilinear"): [[0.0349207, 0.0461375, 0.0565839, 0.0660245, 0.0742753, 0.0812025,
                           0.0867200, 0.0907861],
                          [-0.1549760, -0.1988939, -0.3164381, -0.3412734, -0.2516720,
                           -0.1163981, -0.0087530, 0.0423036]],
    ("s4", "bilinear"): [[0.1124421, 0.1149534, 0.1150426, 0.1128722, 0.1086488, 0.1026106,
                          0.0950170, 0.0861380],
                         [-0.1066017, -0.1714200, -0.2778343, -0.2605495, -0.1491348,
                          -0.0309461, 0.0399684, 0.0601591]],
}


@pytest.mark.parametrize(("name", "disc"), list(UPSTREAM))
def test_filter_matches_state_spaces_s4(name, disc):
    """Same parameter names and shapes as the S4 code, so its weights load and agree."""
    m = S4(2, d_state=4, l_max=8) if name == "s4" else S4D(2, d_state=4, disc=disc)
    params = {"inv_dt": [[-3.0], [-1.0]], "A_real": [[-0.7, 0.2]], "A_imag": [[0.5, 3.0]],
              "B": [[[[1.0, 0.5], [-0.3, 0.8]]]],
              "C": [[[[0.4, -1.0], [1.2, 0.3]], [[-0.6, 0.7], [0.2, -0.9]]]]}
    if name == "s4":
        params["P"] = [[[[0.6, 0.1], [-0.4, 0.5]]]]
    m.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(m.filter(8), torch.tensor(UPSTREAM[name, disc]), atol=2e-6,
                                   rtol=1e-5)


def test_options_are_checked():
    with pytest.raises(ValueError, match="even"):
        S4D(8, d_state=5)
    with pytest.raises(ValueError, match="n_ssm"):
        S4D(8, n_ssm=3)
    with pytest.raises(ValueError, match="disc"):
        S4D(8, disc="euler")
    with pytest.raises(ValueError, match="l_max"):
        S4(8, l_max=0)


def test_dropout_is_tied_over_the_sequence():
    torch.manual_seed(0)
    m = S4D(8, d_state=4, dropout=0.5).train()
    y = torch.ones(3, 11, 8)
    out = m._drop(y)
    assert torch.equal(out, out[:, :1].expand_as(out))  # one mask per (sequence, channel)
    assert (out == 0).any() and (out == 2).any()
    m.eval()
    assert torch.equal(m._drop(y), y)


# ----------------------------------------------------------------------------- configs


# every LRA task has an S4 recipe; a missing file fails its case below
CONFIGS = [*(ROOT / "configs" / "lra" / "s4" / f"{task}.yaml" for task in (
    "listops", "text", "retrieval", "image", "pathfinder", "pathx")),
           ROOT / "configs" / "model" / "s4.yaml", ROOT / "configs" / "model" / "s4d.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_configs_build_a_model(path):
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load(path.read_text())
    mc = lrm.ModelConfig.from_dict(cfg["model"]["model"] | {"vocab_size": 20, "n_classes": 10})
    model = lrm.LRModel(mc)
    assert mc.mixer in ("s4", "s4d") and len(model.blocks) == mc.n_layers
    if path.parent.name == "s4":  # the LRA recipes
        assert mc.n_layers == 6 and mc.bidirectional
        kw = mc.mixer_kwargs
        if path.stem in ("listops", "text", "retrieval"):
            assert kw["d_state"] == 4
        if path.stem == "pathx":
            assert kw["dt_min"] == 1e-4 and kw["l_max"] == 16384
        assert isinstance(cfg["model"]["lr"], float) and "batch_size" in cfg["data"]
