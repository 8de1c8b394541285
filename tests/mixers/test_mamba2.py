"""The Mamba-2 mixer (lrm.mixers.mamba2) against the paper's equations; upstream init, a direct
recurrence of the block, the grouped norm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import causal_conv, close, heads, inputs, linear, longmamba_filter, prepare, rms

from lrm.mixers.mamba2 import Mamba2

# ----------------------------------------------------------------------------- Mamba-2


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


MAMBA2_OPTIONS = {
    "default": {"d_state": 4, "head_dim": 8, "chunk_size": 4},
    "groups": {"d_state": 4, "head_dim": 8, "ngroups": 2, "chunk_size": 5},
    "no_norm_dhdim": {"d_state": 4, "head_dim": 8, "rmsnorm": False, "D_has_hdim": True},
    "dt_limit": {"d_state": 4, "head_dim": 16, "dt_limit": (0.02, 0.06), "chunk_size": 8},
}


@pytest.mark.parametrize("kw", MAMBA2_OPTIONS.values(), ids=MAMBA2_OPTIONS.keys())
def test_mamba2_follows_the_paper(kw):
    m = prepare(Mamba2(16, **kw))
    x = inputs(d=16)
    with torch.no_grad():
        close(m(x)[0], mamba2_equations(m, x))


def test_mamba2_init_follows_upstream():
    torch.manual_seed(0)
    m = Mamba2(64, d_state=8, head_dim=16, ngroups=2)
    assert m.nheads == 8 and m.in_proj.out_features == 2 * 128 + 2 * 2 * 8 + 8
    A = torch.exp(m.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.conv1d.weight.shape == (128 + 32, 1, 4)


def test_mamba2_block_matches_a_direct_recurrence():
    """The mixer's wiring (split order, conv over x|B|C, gated norm) against the per-token
    equations of the module docstring written out by hand."""
    torch.manual_seed(0)
    m = Mamba2(32, d_state=4, head_dim=8, chunk_size=5).eval()
    x = torch.randn(1, 11, 32)
    with torch.no_grad():
        y, _ = m(x)
        z, xBC, dt = m.in_proj(x).split([64, 64 + 8, 8], dim=-1)
        conv = torch.nn.functional.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias,
                                          padding=3, groups=64 + 8)[..., :11]  # causal: 3 pads
        xBC = torch.nn.functional.silu(conv).transpose(1, 2)
        xs, B, C = xBC.split([64, 4, 4], dim=-1)
        delta = torch.nn.functional.softplus(dt + m.dt_bias)
        a = -torch.exp(m.A_log)
        h = torch.zeros(8, 8, 4)
        outs = []
        for t in range(11):
            xt = xs[0, t].view(8, 8)
            h = torch.exp(delta[0, t] * a)[:, None, None] * h + \
                delta[0, t][:, None, None] * xt[..., None] * B[0, t]
            outs.append((h @ C[0, t] + m.D[:, None] * xt).reshape(64))
        yy = torch.stack(outs)[None] * torch.nn.functional.silu(z)
        yy = yy * torch.rsqrt(yy.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight
        torch.testing.assert_close(y, m.out_proj(yy), atol=1e-5, rtol=1e-4)


def test_ngroups_norm_is_per_group():
    m = Mamba2(32, d_state=4, head_dim=8, ngroups=2)
    y = torch.randn(3, 64)
    out = m.norm(y)
    for g in range(2):
        part = y[:, 32 * g:32 * (g + 1)]
        torch.testing.assert_close(out[:, 32 * g:32 * (g + 1)],
                                   part * torch.rsqrt(part.pow(2).mean(-1, keepdim=True) + 1e-5))
