"""Every mixer against its paper: the output computed from the mixer's own parameters by an
independent, token-by-token loop of the paper's equations.

The conformance suite checks that a mixer agrees with itself (full == chunked == token by
token); only a test like these can notice that it computes the wrong thing consistently (a
dropped norm, β where 1 − β belongs, a decay of the wrong sign). The loops below use plain
tensor arithmetic and ``torch.nn.functional`` pointwise functions only: no lrm op, norm or
conv. Every parameter is perturbed first, so that parameters which start at 0 or 1 (norm
weights, biases, D) cannot hide a missing term.

Each test covers one mixer and, through its parametrisation, every option that changes the
math. Everything runs in float64 (modules cast with ``.double()``); the tolerance allows for
the parts of the mixers that still compute in fp32 internally, far below the size of any
planted bug (``scripts/mutants.py``).

Where lrm follows a convention of the authors' code rather than the paper's notation, the loop
follows the code: the gated-delta-rule output is scaled by 1/√K (fla), RoPE rotates the pairs
(i, i + Dh/2) (GPT-NeoX), and the S4 state is written in the full complex basis of conjugate
pairs, as the S4 code's Cauchy kernel sums it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import lrm.longmamba
from lrm.mixers.attention import Attention
from lrm.mixers.fox import ForgettingAttention
from lrm.mixers.gated_deltanet import GatedDeltaNet
from lrm.mixers.mamba import Mamba
from lrm.mixers.mamba2 import Mamba2
from lrm.mixers.s4 import S4, S4D

DTYPE = torch.float64
# fp32-level: some mixers still round parts of their computation to fp32 (they agree with the
# loops to about 5e-7 relative); float64 end to end (lrm.dtypes) allows ~1e-12
TOL = dict(atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- helpers


def prepare(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The module in float64, eval mode, every parameter moved off its initial value."""
    m = m.to(DTYPE).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def inputs(B: int = 2, L: int = 13, d: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, L, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def causal_conv(x: torch.Tensor, conv: torch.nn.Module) -> torch.Tensor:
    """Depthwise causal conv, written out: y_t = Σ_i w_i x_{t−W+1+i} (+ bias); x (B, L, C).

    ``conv`` is an ``nn.Conv1d`` or a module holding one as ``conv1d``."""
    conv = getattr(conv, "conv1d", conv)
    w, b = conv.weight[:, 0], conv.bias  # (C, W)
    W = w.shape[-1]
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for i in range(W):
            s = t - (W - 1) + i
            if s >= 0:
                y[:, t] += w[:, i] * x[:, s]
        if b is not None:
            y[:, t] += b
    return y


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis."""
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def heads(x: torch.Tensor, H: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], H, x.shape[-1] // H)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == DTYPE
    torch.testing.assert_close(actual, expected, **TOL)


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
    **GatedDeltaNet.variants,
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


# ----------------------------------------------------------------------------- S4D and S4


def _complex(p: torch.Tensor) -> torch.Tensor:
    """(..., 2) stored as (re, im) -> complex."""
    return torch.complex(p[..., 0], p[..., 1])


def _ssm_block(m, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y (B, L, H) of the SSMs -> the S4 block: + D u, GELU, Linear H -> 2H, GLU."""
    y = y + m.D[0] * u
    a, b = linear(m.output_linear, F.gelu(y)).chunk(2, dim=-1)
    return a * torch.sigmoid(b)


def s4d_equations(m: S4D, u: torch.Tensor) -> torch.Tensor:
    """S4D (Gu et al., 2022), per channel h, N/2 complex modes and their implied conjugates:
    x_k = Ā x_{k−1} + B̄ u_k, y_k = 2 Re(C x_k) + D u_k with ZOH (Ā = exp(ΔA),
    B̄ = (exp(ΔA) − 1)/A · B) or bilinear (Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = ΔB/(1 − ΔA/2));
    A = −exp(A_real) − i A_imag, Δ = softplus(inv_dt); channel h uses SSM copy h mod n_ssm."""
    Bsz, L, H = u.shape
    copy = torch.arange(H) % m.n_ssm
    dt = F.softplus(m.inv_dt[:, 0])[:, None]  # (H, 1)
    A = torch.complex(-torch.exp(m.A_real), -m.A_imag)[copy]  # (H, N/2)
    Bm = _complex(m.B[0])[copy]
    C = _complex(m.C[0])
    if m.disc == "zoh":
        dA = torch.exp(dt * A)
        dB = (dA - 1) / A * Bm
    else:
        dA = (1 + dt * A / 2) / (1 - dt * A / 2)
        dB = dt * Bm / (1 - dt * A / 2)
    x = torch.zeros(Bsz, H, m.d_state // 2, dtype=torch.complex128)
    ys = []
    for t in range(L):
        x = dA * x + dB * u[:, t, :, None]
        ys.append(2 * (C * x).sum(-1).real)
    return _ssm_block(m, u, torch.stack(ys, 1))


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
    P, Bm, Ct = full(_complex(m.P[0])[copy]), full(_complex(m.B[0])[copy]), full(_complex(m.C[0]))
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
    return _ssm_block(m, u, ys)


S4D_OPTIONS = {**S4D.variants, "legs_bilinear": {"disc": "bilinear", "d_state": 8}}


@pytest.mark.parametrize("kw", S4D_OPTIONS.values(), ids=S4D_OPTIONS.keys())
def test_s4d_follows_the_paper(kw):
    m = prepare(S4D(16, **kw))
    u = inputs(d=16)
    with torch.no_grad():
        close(m(u)[0], s4d_equations(m, u))


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


# ----------------------------------------------------------------------------- attention


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """x (B, L, H, Dh) rotated by position t: channel pair (i, i + Dh/2) by t · base^(−2i/Dh)."""
    Dh = x.shape[-1]
    out = torch.empty_like(x)
    for t in range(x.shape[1]):
        for i in range(Dh // 2):
            angle = t * base ** (-2 * i / Dh)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, t, :, i], x[:, t, :, i + Dh // 2]
            out[:, t, :, i], out[:, t, :, i + Dh // 2] = a * c - b * s, a * s + b * c
    return out


def softmax_attention(q, k, v, bias=None) -> torch.Tensor:
    """o_i = Σ_{j≤i} softmax_j(q_i·k_j / √Dh + bias_ij) v_j, one query at a time; (B, L, H, Dh)."""
    outs = []
    for i in range(q.shape[1]):
        s = torch.einsum("bhe,bjhe->bhj", q[:, i], k[:, :i + 1]) / math.sqrt(q.shape[-1])
        if bias is not None:
            s = s + bias(i)
        p = torch.exp(s - s.amax(-1, keepdim=True))
        outs.append(torch.einsum("bhj,bjhe->bhe", p / p.sum(-1, keepdim=True), v[:, :i + 1]))
    return torch.stack(outs, 1)


def attention_equations(m: Attention, x: torch.Tensor) -> torch.Tensor:
    H = m.n_heads
    q, k, v = (heads(linear(p, x), H) for p in (m.q_proj, m.k_proj, m.v_proj))
    if m.rope:
        q, k = rope(q, m.rope_base), rope(k, m.rope_base)
    o = softmax_attention(q, k, v)
    return linear(m.o_proj, o.flatten(2))


ATTENTION_OPTIONS = {**Attention.variants, "rope_base_100": {"rope_base": 100.0, "n_heads": 2}}


@pytest.mark.parametrize("kw", ATTENTION_OPTIONS.values(), ids=ATTENTION_OPTIONS.keys())
def test_attention_follows_the_paper(kw):
    m = prepare(Attention(32, n_heads=4, **kw) if "n_heads" not in kw else Attention(32, **kw))
    x = inputs()
    with torch.no_grad():
        close(m(x)[0], attention_equations(m, x))


# ----------------------------------------------------------------------------- FoX


def fox_equations(m: ForgettingAttention, x: torch.Tensor) -> torch.Tensor:
    """FoX (Lin et al., 2025): o_i = Σ_{j≤i} softmax_j(q_i·k_j/√Dh + Σ_{l=j+1..i} log f_l) v_j,
    f_t = σ(w_fᵀ x_t + b_f) per head; Pro: KV-shift k̃_t = α_t k_{t−1} + (1 − α_t) k_t with
    α_t = σ(w_αᵀ x_t) per head (k_{−1} = 0), QK-norm (RMSNorm per head, eps 1e-5), output norm
    (RMSNorm per head, eps 1e-6) and then the output gate σ(W_g x)."""
    B, L, d = x.shape
    H = m.n_heads

    def project(p, shifted: bool) -> torch.Tensor:
        if not shifted:
            return heads(linear(p, x), H)
        z, alpha = heads(linear(p.linear, x), H), torch.sigmoid(linear(p.shift_proj, x))
        out = torch.empty_like(z)
        for t in range(L):
            prev = z[:, t - 1] if t > 0 else torch.zeros_like(z[:, 0])
            a = alpha[:, t, :, None]
            out[:, t] = a * prev + (1 - a) * z[:, t]
        return out

    q = heads(linear(m.q_proj, x), H)
    k, v = project(m.k_proj, m.k_shift), project(m.v_proj, m.v_shift)
    if m.use_qk_norm:
        q = rms(q, heads(m.q_norm.weight, H), 1e-5)
        k = rms(k, heads(m.k_norm.weight, H), 1e-5)
    log_f = F.logsigmoid(linear(m.fgate_proj, x))  # (B, L, H)

    def decay(i):  # Σ_{l=j+1..i} log f_l for j = 0..i: (B, H, i + 1)
        return torch.stack([log_f[:, j + 1:i + 1].sum(1) for j in range(i + 1)], -1)

    o = softmax_attention(q, k, v, decay)
    if m.use_output_norm:
        o = rms(o, heads(m.output_norm.weight, H), 1e-6)
    o = o.reshape(B, L, d)
    if m.use_output_gate:
        o = o * torch.sigmoid(linear(m.ogate_proj, x))
    return linear(m.o_proj, o)


FOX_OPTIONS = {
    **ForgettingAttention.variants,
    "only_output_gate": {"pro": False, "output_gate": True},
    "only_output_norm": {"pro": False, "output_norm": True},
    "only_k_shift": {"pro": False, "k_shift": True},
    "only_v_shift": {"pro": False, "v_shift": True},
    "pro_no_qk_norm": {"qk_norm": False},
    "pro_norm_no_gate": {"output_gate": False},
    "forget_bias_3": {"pro": False, "fgate_bias_init": 3.0},
}


@pytest.mark.parametrize("kw", FOX_OPTIONS.values(), ids=FOX_OPTIONS.keys())
def test_fox_follows_the_paper(kw):
    m = prepare(ForgettingAttention(32, n_heads=2, **kw))
    x = inputs()
    with torch.no_grad():
        close(m(x)[0], fox_equations(m, x))


# ----------------------------------------------------------------------------- Mamba


def longmamba_filter(m, delta: torch.Tensor, L: int) -> torch.Tensor:
    """LongMamba (Ye et al., 2025) on Δ (B, L, C) of a prefill of L > T_tr tokens: in global
    channels (calibrated score exp(a·ΣΔ) > c) zero every Δ_t ≤ θ(T), with T the calibrated
    target length nearest to L. Identity when uncalibrated or L ≤ T_tr."""
    f = m.longmamba
    if f is None or int(f.train_len) == 0 or int(f.train_len) >= L:
        return delta
    T_tr = int(f.train_len)
    targets = [round(factor * T_tr) for factor in f.config.length_factors]
    nearest = min(range(len(targets)), key=lambda i: abs(targets[i] - L))
    theta = f.theta[nearest] * f.config.threshold_scale  # (C,)
    is_global = f.score > f.config.channel_threshold
    return torch.where(is_global & (delta <= theta), torch.zeros_like(delta), delta)


def mamba_step_sizes(m: Mamba, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mamba's inputs to the scan: x (after conv and SiLU), z, Δ (unfiltered), B, C."""
    xs, z = linear(m.in_proj, x).chunk(2, dim=-1)
    xs = F.silu(causal_conv(xs, m.conv1d))
    dt, Bm, Cm = linear(m.x_proj, xs).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    return xs, z, F.softplus(linear(m.dt_proj, dt)), Bm, Cm  # Δ: (B, L, d_in)


def mamba_equations(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """Mamba (Gu & Dao, 2023): [x; z] = W_in u, x ← SiLU(conv(x)), [δ; B; C] = W_x x,
    Δ = softplus(W_Δ δ + b_Δ), h_t = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t x_t) ⊗ B_t, A = −exp(A_log),
    y_t = h_t C_t + D ⊙ x_t, out = W_out (y ⊙ SiLU(z))."""
    Bsz, L, _ = x.shape
    xs, z, delta, Bm, Cm = mamba_step_sizes(m, x)
    delta = longmamba_filter(m, delta, L)
    A = -torch.exp(m.A_log)  # (d_in, N)
    h = torch.zeros(Bsz, m.d_inner, m.d_state, dtype=x.dtype)
    ys = []
    for t in range(L):
        d_t = delta[:, t, :, None]
        h = torch.exp(d_t * A) * h + d_t * xs[:, t, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + m.D * xs[:, t])
    return linear(m.out_proj, torch.stack(ys, 1) * F.silu(z))


def mamba2_step_sizes(m: Mamba2, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mamba-2's inputs to the scan: x, B, C (after conv and SiLU), z, Δ (limited, unfiltered)."""
    H, G, N = m.nheads, m.ngroups, m.d_state
    z, xBC, dt = linear(m.in_proj, x).split([m.d_inner, m.conv_dim, H], dim=-1)
    xs, Bm, Cm = F.silu(causal_conv(xBC, m.conv1d)).split([m.d_inner, G * N, G * N], dim=-1)
    delta = F.softplus(dt + m.dt_bias)  # (B, L, H)
    delta = delta.clamp(min=m.dt_limit[0], max=m.dt_limit[1])
    return heads(xs, H), heads(Bm, G), heads(Cm, G), z, delta


def mamba2_equations(m: Mamba2, x: torch.Tensor) -> torch.Tensor:
    """Mamba-2 (Dao & Gu, 2024): [z; xBC; dt] = W_in u, [x; B; C] = SiLU(conv(xBC)),
    Δ = softplus(dt + dt_bias) (clamped to dt_limit), per head h of group g:
    H_t = exp(Δ_t a_h) H_{t−1} + Δ_t x_t B_tᵀ, y_t = H_t C_t + D_h x_t, a_h = −exp(A_log_h);
    out = W_out RMSNorm_group(y ⊙ SiLU(z)) (or W_out (y ⊙ SiLU(z)) without the norm)."""
    Bsz, L, _ = x.shape
    H, P, G, N = m.nheads, m.head_dim, m.ngroups, m.d_state
    xs, Bm, Cm, z, delta = mamba2_step_sizes(m, x)
    delta = longmamba_filter(m, delta, L)
    a = -torch.exp(m.A_log)
    D = m.D.reshape(H, P) if m.D_has_hdim else m.D[:, None]
    group = torch.arange(H) // (H // G)  # heads that share B and C
    state = torch.zeros(Bsz, H, P, N, dtype=x.dtype)
    ys = []
    for t in range(L):
        d_t = delta[:, t, :, None, None]
        Bt, Ct = Bm[:, t][:, group], Cm[:, t][:, group]  # (B, H, N)
        state = torch.exp(d_t * a[:, None, None]) * state + \
            d_t * xs[:, t, :, :, None] * Bt[:, :, None, :]
        ys.append((state * Ct[:, :, None, :]).sum(-1) + D * xs[:, t])
    y = torch.stack(ys, 1).reshape(Bsz, L, m.d_inner) * F.silu(z)
    if m.rmsnorm:
        y = rms(heads(y, G), heads(m.norm.weight, G), 1e-5).reshape(Bsz, L, m.d_inner)
    return linear(m.out_proj, y)


MAMBA_OPTIONS = {
    "default": {"d_state": 4},
    "small": {"d_state": 8, "dt_rank": 4, "d_conv": 3, "chunk_size": 4},
    "bias": {"d_state": 4, "bias": True, "conv_bias": False, "chunk_size": 5},
}
MAMBA2_OPTIONS = {
    "default": {"d_state": 4, "head_dim": 8, "chunk_size": 4},
    "groups": {"d_state": 4, "head_dim": 8, "ngroups": 2, "chunk_size": 5},
    "no_norm_dhdim": {"d_state": 4, "head_dim": 8, "rmsnorm": False, "D_has_hdim": True},
    "dt_limit": {"d_state": 4, "head_dim": 16, "dt_limit": (0.02, 0.06), "chunk_size": 8},
}


@pytest.mark.parametrize("kw", MAMBA_OPTIONS.values(), ids=MAMBA_OPTIONS.keys())
def test_mamba_follows_the_paper(kw):
    m = prepare(Mamba(16, **kw))
    x = inputs(d=16)
    with torch.no_grad():
        close(m(x)[0], mamba_equations(m, x))


@pytest.mark.parametrize("kw", MAMBA2_OPTIONS.values(), ids=MAMBA2_OPTIONS.keys())
def test_mamba2_follows_the_paper(kw):
    m = prepare(Mamba2(16, **kw))
    x = inputs(d=16)
    with torch.no_grad():
        close(m(x)[0], mamba2_equations(m, x))


def receptive_field_score(m, x: torch.Tensor, step_sizes) -> torch.Tensor:
    """LongMamba's channel score from calibration samples x (B, T_tr, d): per sample,
    exp(a_c · Σ_t Δ_t,c) with Δ clamped at its top ``clamp_top`` quantile, averaged over the
    samples. a_c is the channel's decay rate: Mamba-2's a_h, and for Mamba-1 the slowest of the
    channel's N states, max_n A[c, n] (the paper's code covers Mamba-2 only)."""
    delta = step_sizes(m, x)[4 if isinstance(m, Mamba2) else 2]  # (B, T_tr, C)
    a = -torch.exp(m.A_log)
    if a.dim() == 2:
        a = a.max(-1).values
    k = max(1, int(x.shape[1] * m.longmamba.config.clamp_top))
    ceiling = delta.sort(dim=1, descending=True).values[:, k - 1:k]  # the k-th largest
    return torch.exp(a * torch.minimum(delta, ceiling).sum(1)).mean(0)


@pytest.mark.parametrize(("cls", "kw", "equations", "step_sizes"), [
    (Mamba, {"d_state": 4, "chunk_size": 8}, mamba_equations, mamba_step_sizes),
    (Mamba2, {"d_state": 4, "head_dim": 4, "chunk_size": 8}, mamba2_equations, mamba2_step_sizes),
], ids=["mamba", "mamba2"])
def test_longmamba_follows_the_paper(cls, kw, equations, step_sizes):
    """Calibrated at T_tr = 8, a prefill of 30 tokens is filtered in the global channels."""
    m = prepare(cls(16, longmamba={"channel_threshold": 0.5}, **kw))
    calibration = inputs(B=3, L=8, d=16, seed=5)
    lrm.longmamba.calibrate(m, [calibration], train_len=8)
    with torch.no_grad():
        close(m.longmamba.score, receptive_field_score(m, calibration, step_sizes))
    # Put c between the scores, so both kinds of channel exist whatever the initial weights.
    m.longmamba.config = dataclasses.replace(m.longmamba.config,
                                             channel_threshold=float(m.longmamba.score.median()))
    is_global = m.longmamba.global_channels()
    assert 0 < int(is_global.sum()) < m.longmamba.channels  # both kinds, or the test is moot
    x = inputs(L=30, d=16)
    with torch.no_grad():
        y = m(x)[0]
        close(y, equations(m, x))
        with lrm.longmamba.disabled(m):
            unfiltered = m(x)[0]
    assert (y - unfiltered).abs().max() > 1e-3, "the filter dropped nothing"
