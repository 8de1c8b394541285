"""The FoX mixer (lrm.mixers.fox) against the paper's equations; the Pro components, the KV
shift, the state, a short training run.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import close, heads, inputs, linear, prepare, rms, softmax_attention
from contract_cases import CASES

import lrm
from lrm.mixers.fox import ForgettingAttention, ShiftLinear
from lrm.ops.forgetting_attn import (
    forgetting_attn_quadratic_ref,
)

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
    **CASES["fox"],
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


# ----------------------------------------------------------------------------- the mixer


def test_pro_components_switch_individually():
    names = lambda m: {n for n, _ in m.named_parameters()}  # noqa: E731
    pro = names(ForgettingAttention(64))
    assert {"k_proj.linear.weight", "k_proj.shift_proj.weight", "v_proj.shift_proj.weight",
            "q_norm.weight", "k_norm.weight", "output_norm.weight", "ogate_proj.weight",
            "fgate_proj.weight", "fgate_proj.bias", "o_proj.weight"} <= pro
    base = names(ForgettingAttention(64, pro=False))
    assert base == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                    "fgate_proj.weight", "fgate_proj.bias"}
    no_gate = names(ForgettingAttention(64, output_gate=False))
    assert "ogate_proj.weight" not in no_gate and "output_norm.weight" in no_gate
    only_qk = ForgettingAttention(64, pro=False, qk_norm=True)
    assert only_qk.use_qk_norm and not (only_qk.k_shift or only_qk.use_output_gate)
    assert ForgettingAttention(64).fgate_proj.bias.abs().max() == 0  # b_f = 0, as upstream
    assert (ForgettingAttention(64, fgate_bias_init=3.0).fgate_proj.bias == 3.0).all()


def test_kv_shift_is_the_papers_token_shift():
    torch.manual_seed(0)
    sl = ShiftLinear(8, 8, n_heads=2)
    x = torch.randn(2, 5, 8)
    out, last = sl(x, None)
    z, alpha = sl.linear(x), torch.sigmoid(sl.shift_proj(x))
    for t in range(5):
        z_prev = z[:, t - 1] if t else torch.zeros_like(z[:, 0])
        a = alpha[:, t].repeat_interleave(4, dim=-1)  # per head -> per channel
        torch.testing.assert_close(out[:, t], a * z_prev + (1 - a) * z[:, t])
    torch.testing.assert_close(last, z[:, -1])


def test_mixer_matches_the_layer_equations():
    """The mixer equals FoX written out by hand (pro off: q, k, v, forget gate, o_proj)."""
    torch.manual_seed(0)
    m = ForgettingAttention(32, n_heads=2, pro=False).eval()
    x = torch.randn(2, 11, 32)
    y, _ = m(x)
    q, k, v = (p(x).view(2, 11, 2, 16) for p in (m.q_proj, m.k_proj, m.v_proj))
    log_f = F.logsigmoid(m.fgate_proj(x))
    o = forgetting_attn_quadratic_ref(q, k, v, log_f).reshape(2, 11, 32)
    torch.testing.assert_close(y, m.o_proj(o), atol=1e-5, rtol=1e-4)


def test_state_holds_kv_cache_log_gates_and_shift():
    m = ForgettingAttention(64, n_heads=2)
    _, s = m(torch.randn(3, 7, 64), m.init_state(3))
    assert s.k.shape == s.v.shape == (3, 7, 2, 32) and s.log_fgate.shape == (3, 7, 2)
    assert s.k_prev.shape == s.v_prev.shape == (3, 64)
    assert m.state_size(7) == 7 * (2 * 64 + 2) + 2 * 64
    assert ForgettingAttention(64, pro=False).init_state(3).k_prev is None
    with pytest.raises(ValueError, match="64"):
        m(torch.randn(1, 3, 65))


def test_short_training_lowers_the_loss():
    from lra import quick
    from lra.data import recall_tasks

    torch.manual_seed(0)
    x, y = recall_tasks.induction_heads(64, 32, vocab_size=8, seed=0)
    y = torch.where(torch.arange(32) > 0, x.roll(-1, 1), y)  # next-token targets everywhere
    y[:, -1] = -100
    model = lrm.LRModel(lrm.ModelConfig(mixer="fox", d_model=32, n_layers=1, vocab_size=8,
                                        head="lm"))
    losses = quick.fit(model, x, y, steps=30, batch_size=16, lr=3e-3)
    assert math.isfinite(losses[-1]) and sum(losses[-5:]) < sum(losses[:5])
