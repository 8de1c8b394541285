"""The S4 mixer (lrm.mixers.s4) against the paper's equations; the extras of S4 and S4D (the
filter past l_max, streaming, parameter tags, parity with state-spaces, options, dropout,
the LRA configs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import close, complex_pairs, inputs, prepare, ssm_block

import lrm
from lrm.mixers.s4 import S4
from lrm.mixers.s4d import S4D
from lrm.ops import hippo as hp
from lrm.ops import ssm_conv as sc
from lrm.optim import param_groups

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


# ----------------------------------------------------------------------------- S4D and S4


def s4_equations(m: S4, u: torch.Tensor) -> torch.Tensor:
    """S4 (Gu, Goel & Ré, 2022) in the full complex basis of N modes (conjugate pairs):
    A = diag(Λ) − P P*, Ā = (I − ΔA/2)⁻¹(I + ΔA/2), B̄ = (I − ΔA/2)⁻¹ΔB, x_k = Ā x_{k−1} + B̄ u_k,
    y_k = C x_k + D u_k, where the learned C̃ = C (I − Ā^{l_max}) (the truncated generating
    function of the S4 code) gives C = C̃ (I − Ā^{l_max})⁻¹."""
    Bsz, L, H = u.shape
    copy = torch.arange(H) % m.n_ssm
    N = m.d_state

    def full(z):  # half basis (…, N/2) -> full basis [z, conj z] (…, N)
        return torch.cat([z, z.conj()], dim=-1)

    Lam = full(torch.complex(-torch.exp(m.A_real), -m.A_imag)[copy])  # (H, N)
    P, Bm = full(complex_pairs(m.P[0])[copy]), full(complex_pairs(m.B[0])[copy])
    Ct = full(complex_pairs(m.C[0]))
    dt = F.softplus(m.inv_dt[:, 0])
    eye = torch.eye(N, dtype=torch.complex128)
    ys = torch.zeros(Bsz, L, H, dtype=u.dtype)
    for h in range(H):
        A = torch.diag(Lam[h]) - P[h][:, None] * P[h].conj()[None, :]
        inv = torch.linalg.inv(eye - dt[h] / 2 * A)
        dA, dB = inv @ (eye + dt[h] / 2 * A), inv @ (dt[h] * Bm[h])
        C = Ct[h] @ torch.linalg.inv(eye - torch.linalg.matrix_power(dA, m.l_max))
        x = torch.zeros(Bsz, N, dtype=torch.complex128)
        for t in range(L):
            x = x @ dA.T + dB * u[:, t, h, None]
            ys[:, t, h] = (x @ C).real
    return ssm_block(m, u, ys)


S4_OPTIONS = {
    "l_max_above_L": {"d_state": 8, "l_max": 32},
    "l_max_below_L": {"d_state": 8, "l_max": 4, "n_ssm": None},  # C̃ extended by doubling
    "shared_ssm_copies": {"d_state": 6, "l_max": 16, "n_ssm": 2},
}


@pytest.mark.parametrize("kw", S4_OPTIONS.values(), ids=S4_OPTIONS.keys())
def test_s4_follows_the_paper(kw):
    m = prepare(S4(8, **kw))
    u = inputs(d=8)
    with torch.no_grad():
        close(m(u)[0], s4_equations(m, u))


ROOT = Path(__file__).resolve().parents[2]


H = 3


def _impulse(L: int, h: int = H) -> torch.Tensor:
    u = torch.zeros(1, h, L)
    u[..., 0] = 1.0
    return u


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
        assert mc.norm == "batchnorm"  # every S4 LRA config normalises with BatchNorm
        kw = mc.mixer_kwargs
        if path.stem in ("listops", "text", "retrieval"):
            assert kw["d_state"] == 4
        if path.stem == "pathx":
            assert kw["dt_min"] == 1e-4 and kw["l_max"] == 16384
        assert isinstance(cfg["model"]["lr"], float) and "batch_size" in cfg["data"]
