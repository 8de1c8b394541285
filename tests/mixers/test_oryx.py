"""Oryx-style multi-mixer: the schedules, the tying, the two parities (schedule ``attn`` is a
gated multi-head attention, schedule ``rec`` is the core recurrence, both written here from
the mixer's own weights), the per-position switch, both memories updated at every token, and
the ways a schedule reaches the mixer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from contract_cases import CASES

import lrm
from lrm.mixers.oryx import Oryx
from lrm.oryx_schedule import Schedule, hash_uniform, use_schedule

D, B, L = 32, 2, 29


def make(core: str = "gdn", seed: int = 0, **kw) -> Oryx:
    torch.manual_seed(seed)
    kw = {"head_dim": 8, "n_heads": 2, "train_p_attn": None, "chunk_size": 8, **kw}
    m = Oryx(D, core=core, **kw)
    with torch.no_grad():  # spread the gates so that both cores forget at varied rates
        m.dt_bias.add_(torch.randn_like(m.dt_bias))
        m.A_log.copy_(torch.randn_like(m.A_log) - 1)
    return m


def inputs(seed: int = 1, length: int = L, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(B, length, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- schedules


def test_static_schedules():
    t = torch.arange(20)
    assert Schedule.parse("attn").mask(3, 20).all()
    assert not Schedule.parse("rec").mask(3, 20).any()
    assert torch.equal(Schedule.parse("from:7").mask(0, 20), t >= 7)
    assert torch.equal(Schedule.parse("every:5:2").mask(0, 20), t % 5 >= 3)
    # suffix:F is from:⌈(1−F)L⌉ at the call's length
    assert torch.equal(Schedule.parse("suffix:0.25").mask(0, 20, 20), t >= 15)
    assert Schedule.parse("suffix:0.1").resolve(37) == Schedule("from", n=34)
    assert Schedule.parse("suffix:0").fraction(16) == 0.0


def test_rand_schedule_depends_only_on_seed_and_chunk():
    s = Schedule.parse("rand:0.3:4:9")
    full = s.mask(0, 400)
    # any window of absolute positions sees the same modes as the full sequence
    assert torch.equal(s.mask(123, 50), full[123:173])
    # constant inside each chunk of 4
    assert (full.view(-1, 4) == full.view(-1, 4)[:, :1]).all()
    # a fraction near P over 100 chunks, another seed places the chunks elsewhere
    assert 0.15 < full.double().mean() < 0.45
    assert not torch.equal(Schedule.parse("rand:0.3:4:10").mask(0, 400), full)
    # nested: every attention chunk at P = 0.1 is one at P = 0.3
    low = Schedule.parse("rand:0.1:4:9").mask(0, 400)
    assert (full | ~low).all() and low.sum() < full.sum()
    u = hash_uniform(3, torch.arange(10_000))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("spec", ["", "all", "from:-1", "suffix:1.5", "every:4:5", "every:0:0",
                                  "rand:2", "rand:0.1:0", "rand:x", "from:3:4"])
def test_bad_schedules_say_what_is_valid(spec):
    with pytest.raises(ValueError, match="every:N:W"):
        Schedule.parse(spec)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="core must be one of"):
        Oryx(D, core="mamba")
    with pytest.raises(ValueError, match="train_p_attn"):
        Oryx(D, train_p_attn=(0.1, 1.5))
    with pytest.raises(ValueError, match=str(D)):
        make()(torch.randn(B, 5, D + 1))


def test_suffix_in_a_stream_asks_for_from():
    m = make(schedule="suffix:0.2").eval()
    with pytest.raises(ValueError, match="from:P"):
        m(inputs(length=4), m.init_state(B))
    # stateless, suffix:F is from:P at the call's length, and a stream can use from:P
    x = inputs()
    P = math.ceil(0.8 * L)
    with torch.no_grad():
        y_suffix, _ = m(x)
        y_from, _ = m(x, schedule=f"from:{P}")
        y_a, st = m(x[:, :10], m.init_state(B), schedule=f"from:{P}")
        y_b, _ = m(x[:, 10:], st, schedule=f"from:{P}")
    torch.testing.assert_close(y_suffix, y_from, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([y_a, y_b], 1), y_from, atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- tying


@pytest.mark.parametrize("variant", list(CASES["oryx"]))
def test_tied_fraction_at_least_090_for_every_variant(variant):
    m = lrm.mixer("oryx", 64, **CASES["oryx"][variant])
    assert m.tied_fraction() >= 0.9
    assert 0.7 < m.tied_fraction(mlp_ratio=0) < m.tied_fraction()  # the mixer alone


@pytest.mark.parametrize("core", ["gdn", "mamba2"])
@pytest.mark.parametrize("d", [128, 512, 2048])
def test_tied_fraction_at_model_sizes(core, d):
    m = Oryx(d, core=core)
    assert m.tied_fraction() >= 0.9
    # by hand: shared = k, v, g, o projections + convs + norm; the rest is mode-specific
    HK, HV, W = m.key_dim, m.value_dim, m.k_conv1d.width
    shared = d * HK + 2 * d * HV + HV * d + W * (HK + HV) + m.head_v_dim
    total = sum(p.numel() for p in m.parameters())
    per_head = 2 * d + 2 if core == "gdn" else d + 3  # w_α, w_β, A_log, dt_bias | w_Δ, +D
    assert total - shared == 2 * d * HK + per_head * m.n_heads  # two queries + per head
    assert m.tied_fraction(mlp_ratio=0) == pytest.approx(shared / total)


@pytest.mark.parametrize("core", ["gdn", "mamba2"])
def test_mode_parameters_are_what_each_mode_uses(core):
    """Schedule rec leaves the attention query without a gradient and schedule attn the
    recurrent parameters; the shared ones get one either way."""
    groups = make(core).mode_parameters()
    for sched, unused in (("rec", "attn"), ("attn", "rec")):
        m = make(core)
        y, _ = m(inputs(), schedule=sched)
        y.square().sum().backward()
        for name, p in m.named_parameters():
            assert (p.grad is None) == (name in groups[unused]), (sched, name)


# ----------------------------------------------------------------------------- parities


def conv_silu(x, conv):
    """The short causal conv + SiLU written out: x (B, L, C), weight (C, 1, W)."""
    w = conv.weight[:, 0]  # (C, W)
    xp = F.pad(x.transpose(1, 2), (w.shape[1] - 1, 0))
    y = sum(xp[..., i:i + x.shape[1]] * w[:, i:i + 1] for i in range(w.shape[1]))
    return F.silu(y.transpose(1, 2))


def shared_kv(m: Oryx, x):
    H = m.n_heads
    k = conv_silu(x @ m.k_proj.weight.T, m.k_conv1d).unflatten(-1, (H, -1))
    k = k / (k.square().sum(-1, keepdim=True) + 1e-6).sqrt()
    v = conv_silu(x @ m.v_proj.weight.T, m.v_conv1d).unflatten(-1, (H, -1))
    return k, v  # (B, L, H, K), (B, L, H, V)


def output(m: Oryx, x, o):
    """y = W_O · concat_h(RMSNorm(o) ⊙ SiLU(W_g x)), o (B, L, H, V)."""
    g = (x @ m.g_proj.weight.T).unflatten(-1, (m.n_heads, -1))
    o = o / (o.square().mean(-1, keepdim=True) + m.o_norm.eps).sqrt() * m.o_norm.weight
    return (o * F.silu(g)).flatten(2) @ m.o_proj.weight.T


def gated_mha(m: Oryx, x):
    """Gated multi-head causal softmax attention from the mixer's weights, as a matrix."""
    k, v = shared_kv(m, x)
    q = (x @ m.q_proj_attn.weight.T).unflatten(-1, (m.n_heads, -1))
    s = torch.einsum("bihk,bjhk->bhij", q, k)
    causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
    a = s.masked_fill(~causal, -math.inf).softmax(-1)
    return output(m, x, torch.einsum("bhij,bjhv->bihv", a, v))


def core_loop(m: Oryx, x):
    """The core's recurrence token by token from the mixer's weights (the paper's S = (V, K)).

    mamba2: S_t = a_t S_{t−1} + Δ_t v_t k_tᵀ,  o_t = S_t q_t + D v_t
    gdn:    S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = S_t q_t / √K
    """
    k, v = shared_kv(m, x)
    q = (x @ m.q_proj_rec.weight.T).unflatten(-1, (m.n_heads, -1))
    K = k.shape[-1]
    S = x.new_zeros(x.shape[0], m.n_heads, v.shape[-1], K)
    eye = torch.eye(K, dtype=x.dtype)
    if m.core == "mamba2":
        delta = F.softplus(x @ m.dt_proj.weight.T + m.dt_bias)
        decay = torch.exp(-delta * m.A_log.exp())
    else:
        q = F.silu(q)
        q = q / (q.square().sum(-1, keepdim=True) + 1e-6).sqrt() / math.sqrt(K)
        decay = torch.exp(-m.A_log.exp() * F.softplus(x @ m.a_proj.weight.T + m.dt_bias))
        beta = torch.sigmoid(x @ m.b_proj.weight.T)
    outs = []
    for t in range(x.shape[1]):
        kt, vt, a = k[:, t], v[:, t], decay[:, t, :, None, None]
        if m.core == "mamba2":
            S = a * S + delta[:, t, :, None, None] * vt[..., :, None] * kt[..., None, :]
            outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]) + m.D[:, None] * vt)
        else:
            b = beta[:, t, :, None, None]
            S = a * S @ (eye - b * kt[..., :, None] * kt[..., None, :]) \
                + b * vt[..., :, None] * kt[..., None, :]
            outs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))
    return output(m, x, torch.stack(outs, 1))


def outputs_and_grads(fn, m, x):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    do = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
    leaves = [x] + [p for _, p in m.named_parameters()]
    grads = torch.autograd.grad((y * do).sum(), leaves, allow_unused=True)
    return y, grads


def _assert_same_grads(m, g, g_ref, *, atol: float, rtol: float) -> None:
    """Gradients of (x, every parameter of m) agree; one left out by a mode is None in both."""
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, g, g_ref, strict=True):
        if a is None or b is None:
            assert a is None and b is None, name
        else:
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda s, n=name: n + s)


@pytest.mark.parametrize("core", ["gdn", "mamba2"])
def test_schedule_attn_is_gated_multi_head_attention(core):
    """float64 end to end: the attention path has no fp32 op inside."""
    m = make(core).double()
    x = inputs(dtype=torch.float64)
    y, g = outputs_and_grads(lambda x: m(x, schedule="attn")[0], m, x)
    y_ref, g_ref = outputs_and_grads(lambda x: gated_mha(m, x), m, x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-9)
    _assert_same_grads(m, g, g_ref, atol=1e-10, rtol=1e-9)  # the recurrent ones: None in both


@pytest.mark.parametrize("core", ["gdn", "mamba2"])
def test_schedule_rec_is_the_core_recurrence(core):
    m = make(core)
    x = inputs()
    y, g = outputs_and_grads(lambda x: m(x, schedule="rec")[0], m, x)
    y_ref, g_ref = outputs_and_grads(lambda x: core_loop(m, x), m, x)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    _assert_same_grads(m, g, g_ref, atol=5e-5, rtol=5e-4)  # the attention query: None in both


@pytest.mark.parametrize("core", ["gdn", "mamba2"])
@pytest.mark.parametrize("spec", ["every:7:2", "rand:0.4:3:5", "from:11"])
def test_each_position_reads_its_own_mode(core, spec):
    """y_t is the attention output at attention positions and the recurrent one elsewhere."""
    m = make(core).eval()
    x = inputs()
    mode = Schedule.parse(spec).mask(0, L)
    assert mode.any() and not mode.all()
    with torch.no_grad():
        y, _ = m(x, schedule=spec)
        y_attn, _ = m(x, schedule="attn")
        y_rec, _ = m(x, schedule="rec")
    torch.testing.assert_close(y[:, mode], y_attn[:, mode], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y[:, ~mode], y_rec[:, ~mode], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("core", ["gdn", "mamba2"])
def test_both_memories_are_written_whatever_the_mode(core):
    """Streaming under attn and under rec leaves the same state: the recurrence runs under
    attention and the KV cache grows under recurrence."""
    m = make(core).eval()
    x = inputs()
    with torch.no_grad():
        _, s_attn = m(x, m.init_state(B), schedule="attn")
        _, s_rec = m(x, m.init_state(B), schedule="rec")
        # and a switch after 13 tokens reads a memory written while in the other mode
        _, s = m(x[:, :13], m.init_state(B), schedule="rec")
        y_tail, _ = m(x[:, 13:], s, schedule="attn")
        y_full, _ = m(x, schedule="from:13")
    assert s_attn.k.shape[2] == L and s_attn.rec.abs().sum() > 0
    for a, b in zip(s_attn, s_rec, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(y_tail, y_full[:, 13:], atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- plumbing


def tiny_model(**kw):
    torch.manual_seed(0)
    mk = {"head_dim": 8, "chunk_size": 8, **kw.pop("mixer_kwargs", {})}
    return lrm.LRModel(lrm.ModelConfig(mixer="oryx", mixer_kwargs=mk, d_model=D,
                                       n_layers=2, vocab_size=13, **kw))


def test_use_schedule_reaches_every_layer_and_restores():
    model = tiny_model(head="lm", mixer_kwargs={"schedule": "rec", "train_p_attn": None}).eval()
    tokens = torch.randint(0, 13, (B, L))
    with torch.no_grad():
        y_rec = model(tokens)
        with use_schedule(model, "attn"):
            y_attn = model(tokens)
            assert all(b.mixer.schedule_override == Schedule("attn") for b in model.blocks)
        assert all(b.mixer.schedule_override is None for b in model.blocks)
        torch.testing.assert_close(model(tokens), y_rec, atol=0, rtol=0)
        # the same as building the model with schedule attn
        for b in model.blocks:
            b.mixer.schedule = Schedule("attn")
        torch.testing.assert_close(model(tokens), y_attn, atol=0, rtol=0)
    assert not torch.allclose(y_rec, y_attn)
    with pytest.raises(ValueError, match="no Oryx layer"), use_schedule(torch.nn.Linear(2, 2),
                                                                          "attn"):
        pass


def test_forward_keyword_wins_over_use_schedule():
    m = make().eval()
    x = inputs()
    with torch.no_grad():
        ref, _ = m(x, schedule="rec")
        with use_schedule(m, "attn"):
            y, _ = m(x, schedule="rec")
    torch.testing.assert_close(y, ref, atol=0, rtol=0)


def test_training_draws_are_shared_by_layers_and_resumable():
    model = tiny_model(head="lm", mixer_kwargs={"train_p_attn": (0.0, 0.5, 1.0),
                                                "train_chunk": 4})
    seen: list[list[Schedule]] = []

    def record(mixer, args, kwargs):
        seen[-1].append(mixer._schedule(None))
        mixer.train_calls -= 1  # undo the peek: forward draws the same one next

    hooks = [b.mixer.register_forward_pre_hook(record, with_kwargs=True) for b in model.blocks]
    tokens = torch.randint(0, 13, (B, L))
    model.train()
    for _ in range(6):
        seen.append([])
        model(tokens)
    for h in hooks:
        h.remove()
    assert all(s[0] == s[1] and s[0].kind == "rand" for s in seen)  # one mask per step
    assert len({s[0].p for s in seen}) > 1 and len({s[0].seed for s in seen}) == 6
    assert all(int(b.mixer.train_calls) == 6 for b in model.blocks)
    # the counter is in the checkpoint: a restored model continues with draw 6
    state = model.state_dict()
    other = tiny_model(head="lm", mixer_kwargs={"train_p_attn": (0.0, 0.5, 1.0),
                                                "train_chunk": 4})
    other.load_state_dict(state)
    other.train()
    model.train()
    assert other.blocks[0].mixer._schedule(None) == model.blocks[0].mixer._schedule(None)
    # evaluation uses the static schedule, and draws nothing
    model.eval()
    assert model.blocks[0].mixer._schedule(None) == Schedule.parse("every:64:6")


def test_bidirectional_model():
    model = tiny_model(head="classify", n_classes=3, bidirectional=True,
                       mixer_kwargs={"schedule": "suffix:0.3"})
    tokens = torch.randint(0, 13, (B, L))
    lengths = torch.tensor([L, 17])
    logits = model(tokens, lengths)
    assert logits.shape == (B, 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    with use_schedule(model, "every:4:1"), torch.no_grad():
        assert torch.isfinite(model(tokens, lengths)).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("core", ["gdn", "mamba2"])
def test_kernel_path_matches_reference_on_cuda(core, monkeypatch):
    """The same mixer with the kernels (mamba-ssm SSD / fla gated delta rule, causal-conv1d)
    and with LRM_BACKEND=ref: outputs, states and gradients."""
    m = Oryx(128, core=core, head_dim=64, schedule="every:64:8", train_p_attn=None).cuda()
    x = torch.randn(2, 300, 128, device="cuda")

    def run():
        xr = x.clone().requires_grad_(True)
        y, _ = m(xr)
        y.square().sum().backward()
        grads = [xr.grad] + [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        with torch.no_grad():
            _, st = m(x, m.init_state(2, device="cuda"))
        return y.detach(), grads, st

    y, g, st = run()
    monkeypatch.setenv("LRM_BACKEND", "ref")
    y_ref, g_ref, st_ref = run()
    torch.testing.assert_close(y, y_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(st.rec, st_ref.rec, atol=2e-3, rtol=2e-3)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)
