"""The Titans neural memory (lrm.ops.neural_memory): the parallel form against the token loop,
streaming, gradcheck, dtypes, errors, and the stabilisers (soft clamp, Newton-Schulz).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import lrm
from lrm.mixers.titans import Titans
from lrm.ops.delta_rule import gated_delta_rule_recurrent_ref, gated_delta_rule_ref
from lrm.ops.neural_memory import (
    NS_COEFFS,
    NS_STEPS,
    initial_state,
    neural_memory,
    neural_memory_recurrent_ref,
    neural_memory_ref,
    newton_schulz,
    soft_clamp_factor,
)

F64 = torch.float64


def make(B=2, T=37, H=2, K=5, V=4, hidden=6, depth=2, momentum=True, decay=True, seed=0,
         dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    theta = 0.1 * torch.rand(B, T, H, generator=g, dtype=dtype)
    eta = (torch.rand(B, T, H, generator=g, dtype=dtype) if momentum
           else torch.zeros(B, T, H, dtype=dtype))
    alpha = (0.2 * torch.rand(B, T, H, generator=g, dtype=dtype) if decay
             else torch.zeros(B, T, H, dtype=dtype))
    dims = [K, V] if depth == 1 else [K, hidden, V]
    ws = [0.5 * torch.randn(H, a, b, generator=g, dtype=dtype) for a, b in itertools.pairwise(dims)]
    return [q, k, v, theta, eta, alpha], ws


def run(fn, inputs, ws, chunk_size, **kw):
    """Outputs and gradients of a random projection of the outputs, w.r.t. every input and the
    initial weights."""
    leaves = [t.clone().requires_grad_(True) for t in inputs + ws]
    xs, w0 = leaves[:6], leaves[6:]
    y, state = fn(*xs, initial_state(w0, xs[0].shape[0]), chunk_size=chunk_size, **kw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    loss = (y * dy).sum() + sum((w * w).sum() for w in state.weights)  # the state too
    return y, state, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize(("momentum", "decay"), [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("chunk_size", [8, 1, 64])
def test_parallel_form_equals_the_loop(depth, momentum, decay, chunk_size):
    """T = 37 is not a multiple of the chunk: the last chunk is unfinished."""
    inputs, ws = make(depth=depth, momentum=momentum, decay=decay)
    y_ref, s_ref, g_ref = run(neural_memory_recurrent_ref, inputs, ws, chunk_size)
    y, s, g = run(neural_memory_ref, inputs, ws, chunk_size)
    assert 0.1 < y.abs().max() < 100  # neither trivially small nor diverging
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-9)
    for a, b in zip(s, s_ref, strict=True):
        for x, z in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,),
                        strict=True):
            torch.testing.assert_close(x, z, atol=1e-10, rtol=1e-9)
    names = ["q", "k", "v", "theta", "eta", "alpha"] + [f"W{i}" for i in range(len(ws))]
    for name, a, b in zip(names, g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8, msg=lambda m, n=name: f"d{n}: {m}")


def test_chunks_take_gradients_at_the_chunk_start():
    """C = 1 (sequential) and C = 8 differ: the chunked form is the paper's approximation, not
    the sequential rule, and the oracle follows it."""
    inputs, ws = make(depth=1)
    y1, _ = neural_memory_recurrent_ref(*inputs, initial_state(ws, 2), chunk_size=1)
    y8, _ = neural_memory_recurrent_ref(*inputs, initial_state(ws, 2), chunk_size=8)
    assert (y1 - y8).abs().max() > 1e-3


def test_a_token_reads_the_weights_after_its_own_update():
    """Changing v_t changes y_t (not only later outputs): the read follows the token's update."""
    inputs, ws = make(depth=2)
    q, k, v, *gates = inputs
    y, _ = neural_memory_ref(q, k, v, *gates, initial_state(ws, 2), chunk_size=8)
    v2 = v.clone()
    v2[:, 11] += 1.0
    y2, _ = neural_memory_ref(q, k, v2, *gates, initial_state(ws, 2), chunk_size=8)
    torch.testing.assert_close(y2[:, :11], y[:, :11], atol=0, rtol=0)
    assert (y2[:, 11] - y[:, 11]).abs().max() > 1e-3


@pytest.mark.parametrize("depth", [1, 2])
def test_streaming_equals_one_call(depth):
    inputs, ws = make(depth=depth, T=41)
    y_full, s_full = neural_memory_ref(*inputs, initial_state(ws, 2), chunk_size=8)
    state, ys, t = initial_state(ws, 2), [], 0
    for n in [3, 1, 12, 8, 5, 12]:  # cuts inside and on chunk boundaries
        y, state = neural_memory_ref(*(x[:, t:t + n] for x in inputs), state, chunk_size=8)
        ys.append(y)
        t += n
    torch.testing.assert_close(torch.cat(ys, 1), y_full, atol=1e-12, rtol=1e-12)
    assert state.k.shape[1] == 41 % 8  # the unfinished chunk is carried
    for a, b in zip(state.weights + state.momentum, s_full.weights + s_full.momentum,
                    strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_linear_memory_with_chunk_one_no_momentum_no_decay_is_the_delta_rule():
    """W ← W − 2θ kᵀ(kW − v) is h ← h + β k (v − hᵀk)ᵀ with β = 2θ; y = qW is o = hᵀq."""
    inputs, ws = make(depth=1, momentum=False, decay=False, K=6, V=5)
    q, k, v, theta, eta, alpha = inputs
    B = q.shape[0]
    h0 = ws[0].expand(B, *ws[0].shape)
    y, s = neural_memory_ref(q, k, v, theta, eta, alpha, initial_state(ws, B), chunk_size=1)
    zero = torch.zeros_like(theta)  # g = log α = 0: no decay
    o_chunk, h_chunk = gated_delta_rule_ref(q, k, v, zero, 2 * theta, scale=1.0,
                                            initial_state=h0, return_final_state=True)
    o_loop, _ = gated_delta_rule_recurrent_ref(q, k, v, zero, 2 * theta, scale=1.0,
                                               initial_state=h0)
    torch.testing.assert_close(o_loop.double(), o_chunk.double(), atol=1e-5, rtol=1e-5)
    # the delta-rule refs compute in fp32; ours in float64
    torch.testing.assert_close(y, o_chunk.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.weights[0], h_chunk.double(), atol=1e-5, rtol=1e-5)
    # and the claim has teeth: momentum breaks it
    y_m, _ = neural_memory_ref(q, k, v, theta, torch.full_like(eta, 0.5), alpha,
                               initial_state(ws, B), chunk_size=1)
    assert (y_m - y).abs().max() > 1e-2


def test_gradcheck():
    inputs, ws = make(B=1, T=7, H=1, K=3, V=2, hidden=3, depth=2)
    leaves = tuple(t.clone().requires_grad_(True) for t in inputs + ws)

    def f(*xs):
        y, s = neural_memory_ref(*xs[:6], initial_state(list(xs[6:]), 1), chunk_size=3)
        return y, *s.weights, *s.momentum

    assert torch.autograd.gradcheck(f, leaves)


def test_fp32_and_bf16_compute_in_fp32():
    inputs, ws = make(depth=2)
    y64, _ = neural_memory_ref(*inputs, initial_state(ws, 2), chunk_size=8)
    y32, s32 = neural_memory_ref(*(t.float() for t in inputs),
                                 initial_state([w.float() for w in ws], 2), chunk_size=8)
    assert y32.dtype == torch.float32 and s32.weights[0].dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, atol=1e-4, rtol=1e-4)
    yb, sb = neural_memory_ref(*(t.bfloat16() for t in inputs),
                               initial_state([w.bfloat16() for w in ws], 2), chunk_size=8)
    assert yb.dtype == torch.bfloat16 and sb.weights[0].dtype == torch.float32


def test_errors_say_what_to_do():
    inputs, ws = make(depth=1)
    state = initial_state(ws, 2)
    with pytest.raises(ValueError, match="theta"):
        neural_memory_ref(inputs[0], inputs[1], inputs[2], inputs[3][:, :3], *inputs[4:], state)
    _, s = neural_memory_ref(*(t[:, :7] for t in inputs), state, chunk_size=8)
    with pytest.raises(ValueError, match="chunk_size"):
        neural_memory_ref(*(t[:, 7:] for t in inputs), s, chunk_size=4)
    with pytest.raises(TypeError, match="initial_state"):
        neural_memory_ref(*inputs, ws)
    with pytest.raises(RuntimeError, match="no kernel"):
        neural_memory(*inputs, state, backend="kernel")
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        Titans(64, variant="mac", segment_len=20, chunk_size=8)
    with pytest.raises(ValueError, match="variant"):
        lrm.mixer("titans", 64, variant="mak")
    with pytest.raises(ValueError, match="max_grad_norm"):
        Titans(64, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        neural_memory_ref(*inputs, state, max_grad_norm=-1.0)


# ----------------------------------------------------------------------------- stabilisers


def _stabilised_loop(q, k, v, theta, eta, alpha, ws, chunk_size, cap, normalize,
                     norm_residual=False):
    """An independent token loop with the stabilisers written out: the gradient by autograd at
    the chunk's start, the soft clamp G·c·tanh(n/c)/n and five Newton–Schulz matrix steps with
    Muon's coefficients as literals; with ``norm_residual`` the memory is LN(MLP(x)) + x, the
    LayerNorm written out. Returns y and the weights at the unfinished chunk's start (what the
    state holds)."""
    B = q.shape[0]
    W = [w.expand(B, *w.shape) for w in ws]
    S = [torch.zeros_like(w) for w in W]

    def mlp(weights, x):  # x (B, H, in)
        x_in = x
        for i, w in enumerate(weights):
            x = torch.einsum("bhi,bhio->bho", F.gelu(x) if i else x, w)
        if norm_residual:
            mu = x.mean(-1, keepdim=True)
            var = (x - mu).square().mean(-1, keepdim=True)
            x = (x - mu) / (var + 1e-5).sqrt() + x_in
        return x

    ys = []
    for t in range(q.shape[1]):
        if t % chunk_size == 0:
            W0 = W
        loss = (mlp(W0, k[:, t]) - v[:, t]).square().sum()
        grads = torch.autograd.grad(loss, W0, create_graph=True)
        S_new = []
        for g, s in zip(grads, S, strict=True):
            n = g.square().sum((-1, -2), keepdim=True).sqrt()
            if cap is not None:
                g = g * (cap * torch.tanh(n / cap) / n)
            if normalize:
                x = g / g.square().sum((-1, -2), keepdim=True).sqrt().clamp(min=1e-7)
                for _ in range(5):
                    A = x @ x.transpose(-1, -2)
                    x = 3.4445 * x - 4.7750 * A @ x + 2.0315 * A @ A @ x
                g = x
            S_new.append(eta[:, t, :, None, None] * s - theta[:, t, :, None, None] * g)
        S = S_new
        W = [(1 - alpha[:, t, :, None, None]) * w + s for w, s in zip(W, S, strict=True)]
        ys.append(mlp(W, q[:, t]))
    return torch.stack(ys, 1), (W if q.shape[1] % chunk_size == 0 else W0)


def _assert_equals_the_loop(inputs, ws, chunk_size, *, min_change, plain=None, **kw):
    """Every tier of the op with options ``kw`` against the written-out loop: outputs, the
    state's weights, every gradient. ``plain`` (the options without the one under test) must
    differ from the loop by more than ``min_change``, so the option is seen to act."""
    leaves = [t.clone().requires_grad_(True) for t in inputs + ws]
    y_ref, w_ref = _stabilised_loop(*leaves[:6], leaves[6:], chunk_size,
                                    kw.get("max_grad_norm"), kw.get("normalize_surprise", False),
                                    norm_residual=kw.get("norm_residual", False))
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    g_ref = torch.autograd.grad((y_ref * dy).sum() + sum((w * w).sum() for w in w_ref), leaves)
    y_plain, _, _ = run(neural_memory_ref, inputs, ws, chunk_size, **(plain or {}))
    assert (y_plain - y_ref).abs().max() > min_change  # the option changes the result
    for fn in (neural_memory_recurrent_ref, neural_memory_ref, neural_memory):
        y, state, g = run(fn, inputs, ws, chunk_size, **kw)
        torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-9)
        for a, b in zip(state.weights, w_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
        for a, b in zip(g, g_ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize(("cap", "normalize"), [(2.0, False), (None, True), (2.0, True)])
def test_stabilisers_against_an_independent_loop(depth, cap, normalize):
    """Both tiers against the written-out loop (outputs, the state's weights, every gradient).
    T = 37 with C = 8 leaves an unfinished chunk; c = 2 clamps some tokens' gradients and
    leaves others nearly untouched."""
    inputs, ws = make(depth=depth)
    _assert_equals_the_loop(inputs, ws, 8, min_change=1e-2, max_grad_norm=cap,
                            normalize_surprise=normalize)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize(("cap", "chunk_size"), [(None, 8), (None, 1), (2.0, 8)])
def test_norm_residual_against_an_independent_loop(depth, cap, chunk_size):
    """The memory LN(MLP(x)) + x: the parallel form's hand-written LayerNorm backward (the
    surprise δ) against autograd through the written-out loop, and against the op's own
    token loop (torch.func.grad through memory_forward). Outputs, the state's weights, every
    gradient; T = 37 leaves an unfinished chunk."""
    inputs, ws = make(depth=depth, K=5, V=5)
    _assert_equals_the_loop(inputs, ws, chunk_size, min_change=1e-1,
                            plain={"max_grad_norm": cap}, max_grad_norm=cap, norm_residual=True)


def test_norm_residual_needs_equal_widths():
    inputs, ws = make(depth=2, K=5, V=4)
    for fn in (neural_memory_recurrent_ref, neural_memory_ref):
        with pytest.raises(ValueError, match="value width must equal the key width"):
            fn(*inputs, initial_state(ws, 2), chunk_size=8, norm_residual=True)


@pytest.mark.parametrize("options", [
    pytest.param({"max_grad_norm": 2.0, "normalize_surprise": True}, id="stabilisers"),
    pytest.param({"norm_residual": True}, id="norm_residual")])
def test_stabilised_streaming_equals_one_call(options):
    inputs, ws = make(depth=2, T=41, K=5, V=5)
    kw = {"chunk_size": 8, **options}
    y_full, _ = neural_memory_ref(*inputs, initial_state(ws, 2), **kw)
    state, ys, t = initial_state(ws, 2), [], 0
    for n in [3, 1, 12, 8, 5, 12]:
        y, state = neural_memory_ref(*(x[:, t:t + n] for x in inputs), state, **kw)
        ys.append(y)
        t += n
    torch.testing.assert_close(torch.cat(ys, 1), y_full, atol=1e-12, rtol=1e-12)


def test_soft_clamp_and_newton_schulz_by_themselves():
    n = torch.tensor([0.0, 1e-3, 0.5, 3.0, 30.0, 3e4], dtype=F64, requires_grad=True)
    f = soft_clamp_factor(n, 3.0)
    torch.testing.assert_close(n * f, 3.0 * torch.tanh(n / 3.0))  # the norm becomes c tanh(n/c)
    assert f[0] == 1 and (n * f).max() <= 3.0 and abs(f[1] - 1) < 1e-6  # small ones pass
    (g,) = torch.autograd.grad(f.sum(), n)
    assert torch.isfinite(g).all() and g[0] == 0
    # rank one: NS₅ keeps the direction and gives the norm p⁵(1)
    x, d = torch.randn(2, 3, 5, 1, dtype=F64), torch.randn(2, 3, 1, 4, dtype=F64)
    G = 7.0 * x @ d
    sigma = 1.0
    for _ in range(NS_STEPS):
        sigma = NS_COEFFS[0] * sigma + NS_COEFFS[1] * sigma ** 3 + NS_COEFFS[2] * sigma ** 5
    torch.testing.assert_close(newton_schulz(G), sigma * G / torch.linalg.matrix_norm(G)[
        ..., None, None])
    # full rank: the singular values move towards 1 (Muon's iteration lands them in ~[0.7, 1.2])
    s = torch.linalg.svdvals(newton_schulz(torch.randn(4, 6, 9, dtype=F64)))
    assert s.min() > 0.6 and s.max() < 1.25


def test_newton_schulz_is_titans_pytorchs():
    """Same iteration as titans-pytorch's ``newtonschulz5`` (coefficients, steps, ε), on full-rank
    matrices of both orientations (upstream transposes wide-first; NS(Gᵀ) = NS(G)ᵀ)."""
    upstream = pytest.importorskip("titans_pytorch.neural_memory")
    g = torch.randn(2, 3, 6, 9, dtype=F64)
    for m in (g, g.transpose(-1, -2)):
        torch.testing.assert_close(newton_schulz(m), upstream.newtonschulz5(m), atol=1e-12,
                                   rtol=1e-10)


def _diverging_chunks(**kw):
    """The situation in which the MQAR training diverged: a depth-2 memory (K = 32, F = 64,
    Xavier-initialised as the mixer does), keys nearly parallel inside each chunk (mean cosine
    ≈ 0.9), θ at θ_max = 0.02, η = 0.67, little forgetting, large values; nine chunks of 16.
    Returns ‖W‖ (both matrices) after each chunk."""
    g = torch.Generator().manual_seed(0)
    T, K, Fh, C = 144, 32, 64, 16
    common = F.normalize(torch.randn(1, 1, 1, K, generator=g, dtype=F64), dim=-1)
    noise = F.normalize(torch.randn(1, T, 1, K, generator=g, dtype=F64), dim=-1)
    k = F.normalize(0.9 ** 0.5 * common + 0.1 ** 0.5 * noise, dim=-1)
    kk = k[0, :, 0] @ k[0, :, 0].T
    assert 0.85 < (kk.sum() - T) / (T * T - T) < 0.95
    v = 4.0 * torch.randn(1, T, 1, K, generator=g, dtype=F64)
    ws = [(torch.rand(1, a, b, generator=g, dtype=F64) * 2 - 1) * (6 / (a + b)) ** 0.5
          for a, b in ((K, Fh), (Fh, K))]
    theta = torch.full((1, T, 1), 0.02, dtype=F64)
    eta, alpha = torch.full_like(theta, 0.67), torch.full_like(theta, 0.007)
    state, norms = initial_state(ws, 1), []
    for s in range(0, T, C):
        _, state = neural_memory_ref(k[:, s:s + C], k[:, s:s + C], v[:, s:s + C],
                                     theta[:, s:s + C], eta[:, s:s + C], alpha[:, s:s + C],
                                     state, chunk_size=C, **kw)
        norms.append(sum(w.square().sum() for w in state.weights).sqrt().item())
    return norms


def test_the_default_stabiliser_bounds_the_diverging_memory():
    """Without a stabiliser ‖W‖ grows geometrically (≈ 9 → beyond 10⁶ in nine chunks); with the
    mixer's defaults it stays near where it started; normalised surprises bound it as well."""
    import inspect
    defaults = {name: p.default for name, p in inspect.signature(Titans).parameters.items()}
    plain = _diverging_chunks()
    assert not plain[-1] < 1e6, plain  # (inf or nan count as blown up)
    bounded = _diverging_chunks(max_grad_norm=defaults["max_grad_norm"],
                                normalize_surprise=defaults["normalize_surprise"])
    assert max(bounded) < 2 * bounded[0], bounded
    assert max(_diverging_chunks(normalize_surprise=True)) < 20


def test_segment_products_backward_is_exact_with_zero_factors():
    """The hand-written backward of the chunk's segment products against autograd through the
    cumprod form, with factors of exactly 0 (η = 0 is allowed) and 1 among them."""
    from lrm.ops.neural_memory import _segment_products, _SegmentProducts

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, generator=g, dtype=F64)
    x[0, 0, 3] = 0.0
    x[1, 1, 0] = 0.0
    x[2, 0, 5] = 1.0
    x.requires_grad_(True)
    dprod = torch.randn(3, 2, 8, 8, generator=g, dtype=F64)
    ref, = torch.autograd.grad((_segment_products(x) * dprod).sum(), x)
    got, = torch.autograd.grad((_SegmentProducts.apply(x) * dprod).sum(), x)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    assert ref[0, 0].abs().min() < ref[0, 0].abs().max()  # not a degenerate gradient
    assert torch.autograd.gradcheck(_SegmentProducts.apply, (x.detach()[:1].requires_grad_(),))
