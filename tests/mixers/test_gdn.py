"""The Gated DeltaNet mixer (lrm.mixers.gated_deltanet) against the paper's equations; fla's
parameter names and layout, GDN-2, the no-delta ablation, the block, the kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import causal_conv, close, heads, inputs, linear, prepare, rms
from contract_cases import CASES

import lrm
from lrm.mixers.gated_deltanet import GatedDeltaNet
from lrm.ops import delta_rule as dr
from lrm.optim import param_groups

# ----------------------------------------------------------------------------- Gated DeltaNet


def gated_deltanet_equations(m: GatedDeltaNet, x: torch.Tensor) -> torch.Tensor:
    """Yang, Kautz & Hatamizadeh (2025), with the paper's state S ∈ ℝ^{V×K} per head:
    S_t = α_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t / √K; DeltaNet (α ≡ 1),
    the no-delta ablation S_t = α_t S_{t−1} + β_t v_t k_tᵀ, and GDN-2's channel-wise gates
    S_t = S'_t (I − (b_t ⊙ k_t) k_tᵀ) + (w_t ⊙ v_t) k_tᵀ with S'_t = S_{t−1} Diag(exp g_t)."""
    B, L, _ = x.shape
    H, K, V = m.n_heads, m.head_k_dim, m.head_v_dim
    q = heads(F.silu(causal_conv(linear(m.q_proj, x), m.q_conv1d)), H)
    k = heads(F.silu(causal_conv(linear(m.k_proj, x), m.k_conv1d)), H)
    v = heads(F.silu(causal_conv(linear(m.v_proj, x), m.v_conv1d)), H)
    q = q / torch.sqrt(q.square().sum(-1, keepdim=True) + 1e-6)  # L2 norm per head
    k = k / torch.sqrt(k.square().sum(-1, keepdim=True) + 1e-6)

    if m.gates == "gdn":
        beta = torch.sigmoid(linear(m.b_proj, x))  # (B, L, H)
        if m.use_forget_gate:
            g = -torch.exp(m.A_log) * F.softplus(linear(m.a_proj, x) + m.dt_bias)
        else:
            g = torch.zeros(B, L, H, dtype=x.dtype)
    else:
        erase = heads(torch.sigmoid(linear(m.b_proj, x)), H)  # (B, L, H, K)
        write = heads(torch.sigmoid(linear(m.w_proj, x)), H)  # (B, L, H, V)
        if m.use_forget_gate:
            f = linear(m.f_proj[1], linear(m.f_proj[0], x)) + m.dt_bias  # low-rank, (B, L, H·K)
            g = -torch.exp(m.A_log)[:, None] * heads(F.softplus(f), H)  # (B, L, H, K)
        else:
            g = torch.zeros(B, L, H, K, dtype=x.dtype)

    S = torch.zeros(B, H, V, K, dtype=x.dtype)
    outs = []
    for t in range(L):
        qt, kt, vt = q[:, t], k[:, t], v[:, t]
        if m.gates == "gdn2":
            S = S * torch.exp(g[:, t])[:, :, None, :]  # S Diag(exp g)
            read = torch.einsum("bhvk,bhk->bhv", S, erase[:, t] * kt)
            S = S - read[..., None] * kt[:, :, None, :] + \
                (write[:, t] * vt)[..., None] * kt[:, :, None, :]
        else:
            a, b = torch.exp(g[:, t])[..., None, None], beta[:, t, :, None, None]
            if m.delta_rule:
                Sk = torch.einsum("bhvk,bhk->bhv", S, kt)  # S (I − β k kᵀ) = S − β (S k) kᵀ
                S = a * (S - b * Sk[..., None] * kt[:, :, None, :])
            else:
                S = a * S
            S = S + b * vt[..., None] * kt[:, :, None, :]
        outs.append(torch.einsum("bhvk,bhk->bhv", S, qt) / math.sqrt(K))
    o = torch.stack(outs, 1)  # (B, L, H, V)

    o = rms(o, m.o_norm.weight, 1e-5)  # RMSNorm per head (weights shared across heads)
    if m.use_gate:
        o = o * F.silu(heads(linear(m.g_proj, x), H))
    return linear(m.o_proj, o.reshape(B, L, H * V))


GDN_OPTIONS = {
    **CASES["gdn"],
    "gdn_no_output_gate": {"head_dim": 16, "use_gate": False},
    "deltanet_with_output_gate": {"head_dim": 16, "use_forget_gate": False},
    "no_delta_no_forget": {"head_dim": 16, "delta_rule": False, "use_forget_gate": False},
    "gdn2_no_forget": {"head_dim": 16, "gates": "gdn2", "use_forget_gate": False},
    "conv_bias_three_heads": {"head_dim": 8, "conv_bias": True, "d_conv": 3},
}


@pytest.mark.parametrize("kw", GDN_OPTIONS.values(), ids=GDN_OPTIONS.keys())
def test_gated_deltanet_follows_the_paper(kw):
    m = prepare(GatedDeltaNet(32, **kw))
    x = inputs()
    with torch.no_grad():
        close(m(x)[0], gated_deltanet_equations(m, x))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ----------------------------------------------------------------------------- the mixer


def test_parameter_names_follow_fla_and_gates_are_not_decayed():
    m = GatedDeltaNet(64, head_dim=16)
    names = {n for n, _ in m.named_parameters()}
    assert names == {
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "a_proj.weight", "b_proj.weight",
        "g_proj.weight", "A_log", "dt_bias", "q_conv1d.weight",
        "k_conv1d.weight", "v_conv1d.weight", "o_norm.weight", "o_proj.weight"}
    groups = param_groups(m, lr=1e-3, weight_decay=0.1)
    no_wd = {id(p) for grp in groups if grp["weight_decay"] == 0.0 for p in grp["params"]}
    assert id(m.A_log) in no_wd and id(m.dt_bias) in no_wd
    assert m.A_log._optim == {"weight_decay": 0.0} and m.dt_bias._optim == {"weight_decay": 0.0}
    plain = {n for n, _ in GatedDeltaNet(64, head_dim=16, use_forget_gate=False,
                                         use_gate=False).named_parameters()}
    assert not plain & {"a_proj.weight", "A_log", "dt_bias", "g_proj.weight"}
    gdn2 = {n for n, _ in GatedDeltaNet(64, head_dim=16, gates="gdn2").named_parameters()}
    assert {"f_proj.0.weight", "f_proj.1.weight", "w_proj.weight"} <= gdn2
    assert GatedDeltaNet.default_mlp_ratio == 4


def test_default_layout_follows_fla():
    """num_heads · head_dim = 0.75 d, expand_v = 2: about 6 d² parameters (fla's docstring)."""
    d = 512
    m = GatedDeltaNet(d, head_dim=64)
    assert (m.n_heads, m.key_dim, m.value_dim) == (6, 384, 768)
    assert m.A_log.shape == m.dt_bias.shape == (6,)
    n = sum(p.numel() for p in m.parameters())
    assert 6 * d * d <= n < 6.05 * d * d
    assert m.state_size(10**6) == 6 * 64 * 128 + 3 * (2 * 384 + 768)
    # A ~ U(0, 16) and softplus(dt_bias) in [1e-4, 0.1]
    assert (m.A_log.exp() <= 16).all()
    assert (F.softplus(m.dt_bias) >= 1e-4 - 1e-7).all() and (F.softplus(m.dt_bias) <= 0.1).all()


def test_mixer_gdn2_with_tied_gates_equals_gdn():
    """Set the GDN-2 projections so that b = w = β and g is the same for every channel of a
    head; the GDN-2 mixer must then reproduce the GDN mixer."""
    torch.manual_seed(0)
    d = 64
    m1 = GatedDeltaNet(d, head_dim=16)
    m2 = GatedDeltaNet(d, head_dim=16, gates="gdn2")
    Kh, Vh, nh = m1.head_k_dim, m1.head_v_dim, m1.n_heads
    shared = {n: p for n, p in m1.state_dict().items() if not n.startswith(("a_proj", "b_proj",
                                                                             "dt_bias"))}
    m2.load_state_dict(shared, strict=False)
    with torch.no_grad():
        m2.f_proj[0].weight.zero_()
        m2.f_proj[0].weight[:nh] = m1.a_proj.weight  # first nh hidden units = the GDN gate
        m2.f_proj[1].weight.zero_()
        for h in range(nh):
            m2.f_proj[1].weight[h * Kh:(h + 1) * Kh, h] = 1.0  # copy head h's gate to its K
        m2.dt_bias.copy_(m1.dt_bias.repeat_interleave(Kh))
        m2.b_proj.weight.copy_(m1.b_proj.weight.repeat_interleave(Kh, dim=0))
        m2.w_proj.weight.copy_(m1.b_proj.weight.repeat_interleave(Vh, dim=0))
    x = torch.randn(2, 41, d)
    with torch.no_grad():
        torch.testing.assert_close(m2(x)[0], m1(x)[0], atol=1e-5, rtol=1e-4)


def test_no_delta_variant_is_gated_linear_attention():
    """delta_rule=False: h_t = α_t h_{t−1} + β_t k_t v_tᵀ, checked against a loop."""
    torch.manual_seed(0)
    m = GatedDeltaNet(32, head_dim=8, delta_rule=False)
    q = F.normalize(torch.randn(1, 9, m.n_heads, 8), dim=-1)
    k = F.normalize(torch.randn(1, 9, m.n_heads, 8), dim=-1)
    v = torch.randn(1, 9, m.n_heads, 16)
    g = F.logsigmoid(torch.randn(1, 9, m.n_heads))
    beta = torch.rand(1, 9, m.n_heads)
    o, _ = dr.gdn2(q, k, v, g[..., None].expand(q.shape), torch.zeros_like(q),
                   beta[..., None].expand(v.shape))
    h = torch.zeros(1, m.n_heads, 8, 16)
    for t in range(9):
        h = g[:, t].exp()[..., None, None] * h + beta[:, t, :, None, None] * \
            k[:, t, :, :, None] * v[:, t, :, None, :]
        torch.testing.assert_close(o[:, t], torch.einsum("bhk,bhkv->bhv", q[:, t], h) * 8**-0.5)
    y, _ = m(torch.randn(2, 9, 32))
    assert y.shape == (2, 9, 32)


def test_block_uses_mlp_ratio_4():
    block = lrm.build("gdn", d=64, head_dim=16)
    assert block.mlp is not None and block.mlp.fc2.in_features >= 64 * 4 * 2 // 3


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("gates", ["gdn", "gdn2"])
def test_mixer_on_kernels_cuda(gates, monkeypatch):
    torch.manual_seed(0)
    m = GatedDeltaNet(128, head_dim=32, gates=gates).cuda().eval()
    x = torch.randn(2, 150, 128, device="cuda")
    with torch.no_grad():
        y, _ = m(x)
        monkeypatch.setenv("LRM_BACKEND", "ref")
        y_ref, _ = m(x)
        monkeypatch.delenv("LRM_BACKEND")
        state, ys = m.init_state(2, device="cuda"), []
        for t in range(150):  # decoding: the fused recurrent kernel, one token at a time
            y_t, state = m(x[:, t:t + 1], state)
            ys.append(y_t)
    torch.testing.assert_close(y, y_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.cat(ys, 1), y_ref, atol=2e-3, rtol=2e-3)
