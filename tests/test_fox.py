"""Forgetting attention (FoX): the op's three forms agree, the blockwise ref never holds a
(T, T) tensor, parity with flash-linear-attention's naive reference, and the mixer's options."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import LargestTensor

import lrm
from lrm.mixers.fox import ForgettingAttention, ShiftLinear
from lrm.ops.forgetting_attn import (
    forgetting_attn,
    forgetting_attn_quadratic_ref,
    forgetting_attn_recurrent_ref,
    forgetting_attn_ref,
)


def make(B=2, Tk=37, H=3, D=8, Dv=None, seed=0, gate_shift=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, Tk, H, D, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, Tk, H, Dv or D, generator=g, dtype=dtype)
    # gates spread over (0, 1): some heads forget fast, some hardly at all
    log_f = F.logsigmoid(2 * torch.randn(B, Tk, H, generator=g) + gate_shift)
    return q, k, v, log_f


def outputs_and_grads(fn, q, k, v, log_f, Tq=None, **kw):
    Tq = q.shape[1] if Tq is None else Tq
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, log_f)]
    q_, k_, v_, g_ = leaves
    o = fn(q_[:, q_.shape[1] - Tq:], k_, v_, g_, **kw)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(123))
    grads = torch.autograd.grad((o * do).sum(), leaves)
    return o, grads


@pytest.mark.parametrize(("Tk", "Tq", "block_q", "block_k"), [
    (37, 37, 8, 16),     # several tiles, ragged last tiles
    (37, 37, 128, 512),  # one tile (default sizes)
    (61, 61, 16, 5),     # key tiles smaller than query tiles
    (53, 19, 4, 8),      # a cache of 34 keys, then 19 queries
    (29, 1, 8, 8),       # decoding one token
])
def test_blockwise_equals_quadratic_outputs_and_gradients(Tk, Tq, block_q, block_k):
    q, k, v, log_f = make(Tk=Tk, Dv=6)
    o_ref, g_ref = outputs_and_grads(forgetting_attn_quadratic_ref, q, k, v, log_f, Tq)
    o, g = outputs_and_grads(forgetting_attn_ref, q, k, v, log_f, Tq,
                             block_q=block_q, block_k=block_k)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-4)
    for name, a, b in zip(["q", "k", "v", "log_f"], g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda s, n=name: f"d{n}: {s}")


@pytest.mark.parametrize(("Tk", "Tq"), [(23, 23), (23, 9)])
def test_recurrent_equals_quadratic(Tk, Tq):
    q, k, v, log_f = make(Tk=Tk)
    o_rec = forgetting_attn_recurrent_ref(q[:, Tk - Tq:], k, v, log_f)
    o_quad = forgetting_attn_quadratic_ref(q[:, Tk - Tq:], k, v, log_f)
    torch.testing.assert_close(o_rec, o_quad, atol=1e-5, rtol=1e-4)


def test_cache_form_equals_full_sequence():
    """Queries at positions T..T+L-1 over keys 0..T+L-1 are the tail of the full output."""
    q, k, v, log_f = make(Tk=41)
    full = forgetting_attn_ref(q, k, v, log_f, block_q=8, block_k=8)
    tail = forgetting_attn_ref(q[:, 30:], k, v, log_f, block_q=8, block_k=8)
    torch.testing.assert_close(tail, full[:, 30:], atol=1e-6, rtol=1e-5)


def test_no_forgetting_is_causal_softmax_attention():
    q, k, v, _ = make(Tk=45, D=16)
    zero = torch.zeros(q.shape[:3])
    o = forgetting_attn_ref(q, k, v, zero, block_q=16, block_k=8)
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                          is_causal=True).transpose(1, 2)
    torch.testing.assert_close(o, sdpa, atol=1e-5, rtol=1e-4)


def test_forgetting_changes_the_output():
    q, k, v, log_f = make(Tk=33)
    no_forget = forgetting_attn_ref(q, k, v, torch.zeros_like(log_f))
    assert (forgetting_attn_ref(q, k, v, log_f) - no_forget).abs().max() > 1e-2


def _load_fla_naive():
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("fla-core (a [dev] dependency) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "ops" / "forgetting_attn" / "naive.py"
    mod_spec = importlib.util.spec_from_file_location("_fla_forgetting_naive", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)  # only torch + einops: no triton needed
    return mod.naive_forgetting_attn


def test_parity_with_fla_naive():
    naive = _load_fla_naive()
    q, k, v, log_f = make(Tk=50, H=2, D=16)
    ours = forgetting_attn_ref(q, k, v, log_f, block_q=16, block_k=8)
    theirs = naive(q, k, v, log_f).to(ours.dtype)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    ours_scaled = forgetting_attn_ref(q, k, v, log_f, scale=0.3)
    torch.testing.assert_close(ours_scaled, naive(q, k, v, log_f, scale=0.3), atol=1e-5,
                               rtol=1e-4)


def test_blockwise_ref_never_materialises_T_by_T():
    B, T, H, D = 1, 1024, 1, 16
    q, k, v, log_f = (t.requires_grad_(True) for t in make(B=B, Tk=T, H=H, D=D))
    with LargestTensor() as mode:
        o = forgetting_attn_ref(q, k, v, log_f, block_q=64, block_k=128)
        o.square().sum().backward()
    # one tile is 64 x 128 = 8192 scores; T x T would be 1,048,576
    assert mode.largest <= max(64 * 128, T * D) * B * H, mode.largest
    with LargestTensor() as mode:
        forgetting_attn_quadratic_ref(q, k, v, log_f)
    assert mode.largest >= T * T  # the check above can see a (T, T) tensor


def test_long_sequences_keep_nearby_decays_exact():
    """|c| grows to ~1e4 here; the per-block rebasing keeps D_ij of nearby tokens exact."""
    q, k, v, _ = make(B=1, Tk=4000, H=1, D=8)
    log_f = torch.full(q.shape[:3], -3.0)  # c_T = -12000
    o = forgetting_attn_ref(q[:, -5:], k, v, log_f)
    # only the last ~10 keys matter; an exact answer from those alone:
    o_local = forgetting_attn_quadratic_ref(q[:, -5:], k[:, -40:], v[:, -40:], log_f[:, -40:])
    torch.testing.assert_close(o, o_local, atol=1e-6, rtol=1e-5)


def test_dispatch_falls_back_and_kernel_request_explains():
    q, k, v, log_f = make(Tk=9)
    torch.testing.assert_close(forgetting_attn(q, k, v, log_f), forgetting_attn_ref(q, k, v, log_f))
    with pytest.raises(RuntimeError, match="not all CUDA"):
        forgetting_attn(q, k, v, log_f, backend="kernel")
    with pytest.raises(ValueError, match="Tq <= Tk"):
        forgetting_attn_ref(k, q[:, :3], v[:, :3], log_f[:, :3])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fla_kernel_matches_ref_on_cuda():
    from lrm.ops import _kernels

    if not _kernels.HAS_FLA:
        pytest.fail("flash-linear-attention does not import on this CUDA machine")
    q, k, v, log_f = (t.cuda() for t in make(B=2, Tk=300, H=4, D=64))
    o_ref, g_ref = outputs_and_grads(forgetting_attn_ref, q, k, v, log_f)
    o, g = outputs_and_grads(lambda *a: forgetting_attn(*a, backend="kernel"), q, k, v, log_f)
    torch.testing.assert_close(o, o_ref, atol=2e-3, rtol=2e-3)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)


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
