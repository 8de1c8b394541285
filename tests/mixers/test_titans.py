"""The Titans mixer (lrm.mixers.titans) against the paper's equations (MAC, MAG, MAL, LMM),
causality inside a MAC segment, the window, exact streaming in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from contract_cases import CASES

import lrm
from lrm.mixers.titans import Titans
from lrm.nn import rope
from lrm.ops.neural_memory import (
    initial_state,
    memory_forward,
    neural_memory_recurrent_ref,
)

F64 = torch.float64


def _rope(t: torch.Tensor) -> torch.Tensor:
    """RoPE at positions 0..L−1."""
    return rope(t, torch.arange(t.shape[-2]))


# ----------------------------------------------------------------------------- the mixer


def _l2(x):
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + 1e-6)


def _memory_branch_by_hand(mem, x, norm_residual=False):
    """The LMM branch from its parameters: the paper's equations, with the token loop."""
    H = mem.n_heads
    qkv = torch.cat([mem.to_queries(x), mem.to_keys(x), mem.to_values(x)], -1)
    w = mem.conv.weight[:, 0]  # (C, W): a causal depthwise conv, written out
    W = w.shape[-1]
    xp = F.pad(qkv, (0, 0, W - 1, 0))
    conv = sum(xp[:, i:i + x.shape[1]] * w[:, i] for i in range(W)) + mem.conv.bias
    q, k, v = (t.unflatten(-1, (H, -1)) for t in F.silu(conv).chunk(3, -1))
    q, k = _l2(q), _l2(k)
    theta = mem.theta_max * torch.sigmoid(mem.to_adaptive_step(x))
    eta, alpha = torch.sigmoid(mem.to_momentum(x)), torch.sigmoid(mem.to_decay_factor(x))
    o, _ = neural_memory_recurrent_ref(q, k, v, theta, eta, alpha,
                                       initial_state(list(mem.memory_model_parameters),
                                                     x.shape[0]),
                                       chunk_size=mem.chunk_size,
                                       max_grad_norm=mem.max_grad_norm,
                                       normalize_surprise=mem.normalize_surprise,
                                       norm_residual=norm_residual)
    o = o.flatten(2)
    o = o * torch.rsqrt(o.unflatten(-1, (H, -1)).square().mean(-1) + 1e-6).repeat_interleave(
        mem.head_dim, -1) * mem.o_norm.weight
    return mem.o_proj(o * F.silu(mem.g_proj(x)))


def _swa_by_hand(m, x):
    """Dense masked attention over [persistent ‖ x] with a window of w keys."""
    L = x.shape[1]
    q, k, v = (m._heads(p(x)) for p in (m.q_proj, m.k_proj, m.v_proj))
    kp, vp = m._persistent_kv(x)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None]
    band = (j <= i) & (j > i - m.window)
    s = torch.cat([q @ kp.transpose(-1, -2),
                   (_rope(q) @ _rope(k).transpose(-1, -2)).masked_fill(~band, -1e300)],
                  -1) / q.shape[-1] ** 0.5
    o = torch.softmax(s, -1) @ torch.cat([vp, v], 2)
    return m.o_proj(o.transpose(1, 2).flatten(2))


@pytest.mark.parametrize(("variant", "norm_residual"), [
    pytest.param("lmm", False, id="lmm"), pytest.param("mag", False, id="mag"),
    pytest.param("mal", False, id="mal"), pytest.param("lmm", True, id="lmm_norm_residual")])
def test_mixer_against_the_papers_equations(variant, norm_residual):
    torch.manual_seed(0)
    m = Titans(32, variant=variant, head_dim=8, chunk_size=4, window=5, n_persistent=3,
               attn_heads=2, memory_norm_residual=norm_residual).double()
    x = torch.randn(2, 23, 32, dtype=F64)
    y, _ = m(x)
    mem = _memory_branch_by_hand(m.memory, x, norm_residual)
    if variant == "lmm":
        ref = mem
    elif variant == "mag":
        ref = m.norm_y(_swa_by_hand(m, x)) * torch.sigmoid(m.norm_m(mem))
    else:
        ref = _swa_by_hand(m, mem)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("norm_residual", [False, True])
def test_mac_against_the_papers_equations(norm_residual):
    """Segment by segment: read the memory of the segment's start, attend over [P ‖ h ‖ x],
    update the memory with y, gate y with the memory's read of y. With ``norm_residual`` the
    memory is LN(MLP(x)) + x in the segment read and in the update alike."""
    torch.manual_seed(0)
    S = 8
    m = Titans(32, variant="mac", head_dim=8, chunk_size=4, segment_len=S, n_persistent=3,
               attn_heads=2, d_conv=0, memory_norm_residual=norm_residual).double()
    x = torch.randn(2, 21, 32, dtype=F64)
    y, _ = m(x)
    mem = m.memory
    B, H = x.shape[0], mem.n_heads
    state = initial_state(list(mem.memory_model_parameters), B)
    outs = []
    for s0 in range(0, x.shape[1], S):
        xs = x[:, s0:s0 + S]
        qx = _l2(F.silu(mem.to_queries(xs)).unflatten(-1, (H, -1)))
        h = m.h_proj(memory_forward(state.weights, qx, norm_residual=norm_residual).flatten(2))
        L = xs.shape[1]
        q, k, v = (m._heads(p(xs)) for p in (m.q_proj, m.k_proj, m.v_proj))
        hk, hv = m._heads(m.k_proj(h)), m._heads(m.v_proj(h))
        kp, vp = m._persistent_kv(xs)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        qr = _rope(q)
        s = torch.cat([q @ kp.transpose(-1, -2),
                       (qr @ _rope(hk).transpose(-1, -2)).masked_fill(~causal, -1e300),
                       (qr @ _rope(k).transpose(-1, -2)).masked_fill(~causal, -1e300)],
                      -1) / q.shape[-1] ** 0.5
        o = torch.softmax(s, -1) @ torch.cat([vp, hv, v], 2)
        ys = m.o_proj(o.transpose(1, 2).flatten(2))
        # the memory learns from N(y), token by token (no conv here: d_conv=0)
        yn = m.norm_mem_in(ys)
        qm, km, vm = (F.silu(p(yn)).unflatten(-1, (H, -1)) for p in (
            mem.to_queries, mem.to_keys, mem.to_values))
        qm, km = _l2(qm), _l2(km)
        gates = (mem.theta_max * torch.sigmoid(mem.to_adaptive_step(yn)),
                 torch.sigmoid(mem.to_momentum(yn)), torch.sigmoid(mem.to_decay_factor(yn)))
        r, state = neural_memory_recurrent_ref(qm, km, vm, *gates, state,
                                               chunk_size=mem.chunk_size,
                                               max_grad_norm=mem.max_grad_norm,
                                               normalize_surprise=mem.normalize_surprise,
                                               norm_residual=norm_residual)
        r = mem.o_norm(r.flatten(2)) * F.silu(mem.g_proj(yn))
        outs.append(m.norm_y(ys) * torch.sigmoid(m.norm_m(mem.o_proj(r))))
    torch.testing.assert_close(y, torch.cat(outs, 1), atol=1e-10, rtol=1e-9)


def test_mac_segments_are_causal_inside():
    """Query i of a segment must not see h_j (read with x_j) for j > i."""
    torch.manual_seed(0)
    m = Titans(32, variant="mac", head_dim=8, chunk_size=4, segment_len=16).double()
    x = torch.randn(1, 16, 32, dtype=F64)
    x2 = x.clone()
    x2[:, 9] += 1.0
    y, _ = m(x)
    y2, _ = m(x2)
    torch.testing.assert_close(y2[:, :9], y[:, :9], atol=1e-12, rtol=0)


def test_window_limits_what_attention_sees():
    """Beyond the window, only the memory can carry a token: the swa ablation forgets it."""
    torch.manual_seed(0)
    x = torch.randn(1, 40, 32)
    x2 = x.clone()
    x2[:, 2] += 3.0
    for variant, sees in (("swa", False), ("mag", True)):
        m = Titans(32, variant=variant, head_dim=8, chunk_size=4, window=8)
        with torch.no_grad():
            d = (m(x2)[0] - m(x)[0])[:, 20:].abs().max()
        assert (d > 1e-4) == sees, (variant, d)


@pytest.mark.parametrize("variant", list(CASES["titans"]))
def test_streaming_is_exact_in_float64(variant):
    """Full == chunked with state == token by token, to rounding, for every variant."""
    torch.manual_seed(0)
    m = lrm.mixer("titans", 32, **{**CASES["titans"][variant], "head_dim": 8}).double().eval()
    x = torch.randn(2, 29, 32, dtype=F64)
    with torch.no_grad():
        y_full, _ = m(x)
        outs = {}
        for name, cuts in (("chunked", [1, 6, 13, 9]), ("tokens", [1] * 29)):
            state, ys, t = m.init_state(2, dtype=F64), [], 0
            for n in cuts:
                y, state = m(x[:, t:t + n], state)
                ys.append(y)
                t += n
            outs[name] = torch.cat(ys, 1)
    for name, y in outs.items():
        torch.testing.assert_close(y, y_full, atol=1e-12, rtol=1e-12, msg=lambda s, n=name: (
            f"{n} != full: {s}"))
