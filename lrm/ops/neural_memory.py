"""Titans' neural long-term memory (Behrouz, Zhong & Mirrokni, 2025): an MLP whose weights learn
at test time, by gradient descent with momentum and forgetting on an associative loss.

Per head, the memory is M_W: ℝ^K → ℝ^V, an MLP of depth 1 or 2 without biases,

    depth 1:  M_W(k) = k W                      W ∈ ℝ^{K×V}
    depth 2:  M_W(k) = σ(k W₁) W₂               W₁ ∈ ℝ^{K×F}, W₂ ∈ ℝ^{F×V}, σ = GELU (or SiLU)

and every token t writes (k_t, v_t) into it and reads with q_t:

    ℓ(W; k_t, v_t) = ‖M_W(k_t) − v_t‖²                       associative loss ("surprise")
    S_t = η_t S_{t−1} − θ_t ∇_W ℓ(W'; k_t, v_t)              momentum
    W_t = (1 − α_t) W_{t−1} + S_t                             forgetting
    y_t = M_{W_t}(q_t)                                         read, no update

Chunks. The sequence is cut into chunks of C tokens, at absolute positions 0, C, 2C, ...
Inside a chunk every gradient is taken at W' = the weights at the chunk's start (the paper's
mini-batch gradient descent, §3.2); across chunks the recursion is exact. C = 1 is the fully
sequential rule. **Which weights a token reads:** token t reads W_t, the weights *after its own
update* (the paper's Eq. 15: the update at t precedes the read), built from the gradients of
the tokens 0..t of its chunk, all taken at the chunk's start. titans-pytorch 0.5.5 differs: a
retrieval there reads the weights as they stood at the end of the previous chunk (the updates
of the token's own chunk are not yet visible), and its η, α are one value per chunk.

Parallel form (``neural_memory_ref``). With the chunk's start (W₀, S₀) fixed, the gradients
u_i = −θ_i ∇ℓ(W₀; k_i, v_i) of its C tokens do not depend on each other, and both recursions
are linear. Writing Ē_{t,i} = Π_{l=i+1..t} η_l and Ā_{t,j} = Π_{l=j+1..t} (1 − α_l):

    S_t = Ē_{t,0} S₀ + Σ_{i≤t} Ē_{t,i} u_i
    W_t = Ā_{t,0} W₀ + c_t S₀ + Σ_{i≤t} m_{t,i} u_i,     c_t = Σ_{j≤t} Ā_{t,j} Ē_{j,0},
                                                         m = Ā Ē  (a C×C matrix product)

so the momentum and the decay become two C×C lower-triangular matrices per chunk, computed for
all chunks at once (a scan in matrix form). For an MLP every per-token gradient is an outer
product, ∇_{W₁}ℓ_i = k_i ⊗ δ¹_i and ∇_{W₂}ℓ_i = z_i ⊗ δ²_i (z_i = σ(k_i W₁), δ² = 2(M(k_i) − v_i),
δ¹ = (δ² W₂ᵀ) ⊙ σ'(k_i W₁)), so the read at W_t never forms the per-token weights:

    q_t W₁,t = Ā_{t,0} q_t W₁,₀ + c_t q_t S₁,₀ − Σ_{i≤t} m_{t,i} θ_i (q_t·k_i) δ¹_i

(and likewise through the second layer with z_q = σ(q_t W₁,t) and z_i): attention-like C×C
scores per chunk. Only the recursion from one chunk to the next runs in a Python loop over the
⌈T/C⌉ chunks (each chunk's gradients need the previous chunk's weights); nothing loops over
tokens. Memory: O(T·C) for the scores, never per-token weights.

Streaming. The state holds the weights and the momentum *at the start of the unfinished chunk*
and that chunk's tokens so far (k, v, θ, η, α). A call replays those tokens first (their
gradients are again taken at the chunk's start, so the result is the same) and drops their
outputs: a stream cut anywhere equals a single call.

Stabilisers (options, both off by default in the op; lrm's deviation from the paper). Nothing
in the paper bounds the inner step: inside a chunk all C gradients are taken at the same W₀, so
when the chunk's keys are nearly parallel the chunk's step is up to C times one token's, and the
depth-2 memory's curvature along a key grows with ‖W₂‖²; past a threshold each chunk overshoots
further than the last and W grows geometrically. Two per-token transforms of each gradient
matrix G_i = ∇_{W^{(l)}}ℓ(W₀; k_i, v_i) (one per weight matrix l, per batch row and head) bound
it; they act before θ, so u_i = −θ_i 𝒯(G_i) and θ keeps its meaning as the step size:

    soft clamp  (max_grad_norm = c):   𝒯(G) = G · tanh(n/c) / (n/c),   n = ‖G‖_F   (1 at n = 0)

  a smooth cap: ‖𝒯(G)‖ = c tanh(n/c) < c, and 𝒯(G) = G (1 − n²/3c² + …) for n ≪ c, so small
  surprises pass unchanged. It is the tanh soft-capping of Gemma 2 (Gemma Team, 2024, §2:
  logits ← c tanh(logits/c)) applied to the gradient's norm.

    normalised surprise (normalize_surprise = True):   𝒯(G) = NS₅(G)

  five Newton–Schulz steps X ← aX + (b XXᵀ + c (XXᵀ)²) X from X₀ = G / max(‖G‖_F, 10⁻⁷), with
  the quintic coefficients (a, b, c) = (3.4445, −4.7750, 2.0315) of Muon (Jordan et al., 2024,
  "Muon: An optimizer for hidden layers in neural networks"): an approximate orthogonalisation,
  each singular value σ ↦ p(σ) = aσ + bσ³ + cσ⁵. A per-token gradient is an outer product
  x_i ⊗ δ_i (rank one, singular value ‖x_i‖‖δ_i‖ = ‖G‖_F), so NS₅(G) = p⁵(σ₀) G / max(‖G‖_F, 10⁻⁷)
  with σ₀ = ‖G‖_F / max(‖G‖_F, 10⁻⁷): a unit-direction surprise of norm p⁵(1) ≈ 0.696. The
  token loop runs the matrix iteration; the parallel form scales δ_i by that closed form.

Both may be on: the clamp comes first (and then only matters below the 10⁻⁷ floor). In the
depth-2 memory δ¹_i is computed from the untransformed δ²_i (it is the gradient's chain rule),
then each layer's gradient is transformed with its own norm.

titans-pytorch 0.5.5 has both ideas with other semantics, so no parity is claimed: its
``max_grad_norm`` rescales the θ-weighted gradient of a whole chunk (Σ_i θ_i ∇ℓ_i, one per chunk
and weight matrix) to the norm (c/2)(1 + tanh(2n/c)), which lies in (c/2, c) for every n > 0, so
small gradients are *raised* to at least c/2; its ``spectral_norm_surprises`` runs the same
Newton–Schulz iteration (same coefficients, five steps) on the momentum S_t (after the momentum
scan, θ inside), so the learned step size θ does not set the size of the update there.

Norm and residual (option ``norm_residual``; off by default, the paper's memory is the bare
MLP). titans-pytorch 0.5.5 wraps its memory model by default in the form of TTT (Sun et al.,
2024, §2.7): the memory becomes

    M̃_W(x) = LN(M_W(x)) + x,      LN(h) = (h − mean h) / √(var h + ε),  ε = 10⁻⁵

(it needs V = K), and the loss, the gradients and every read use M̃. Only ∂ℓ/∂M changes: with
h_i = M_{W₀}(k_i), n_i = LN(h_i) and r_i = 2(n_i + k_i − v_i), the gradient at the MLP's output
is the LayerNorm's backward,

    δ_i = (r_i − mean(r_i) − n_i · mean(r_i ⊙ n_i)) / √(var h_i + ε),

which takes the place of 2(M(k_i) − v_i) in the outer products above, and the read becomes
y_t = LN(M_{W_t}(q_t)) + q_t. lrm's LN has no learned scale (titans-pytorch's has one, a
memory weight of its own that the inner loop also updates, starting at 1): a simplification.

Degenerate case (tested): depth 1, C = 1, η = 0, α = 0 gives W_t = W_{t−1} − 2θ_t k_tᵀ(k_t W_{t−1}
− v_t), the delta rule with β = 2θ (``lrm.ops.delta_rule`` with g = 0, scale 1).

Symbols: B batch, T tokens of this call, H heads, K key width, V value width, F hidden width of
the depth-2 memory, C chunk size, N = ⌈T/C⌉ chunks, θ learning rate, η momentum decay,
α forgetting, S momentum ("surprise"), W memory weights, G a per-token gradient matrix, n its
Frobenius norm, c the soft clamp's cap, 𝒯 the stabilising transform, NS₅ five Newton–Schulz
steps, p their polynomial, LN LayerNorm without a learned scale, ε its epsilon. Layout:
q, k (B, T, H, K); v (B, T, H, V); θ, η, α (B, T, H); weights (B, H, d_in, d_out).

Compute dtype: promote(input dtype, float32) (``lrm.dtypes``); the state is kept in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from lrm.dtypes import compute_dtype, upcast

ACTIVATIONS = ("gelu", "silu")


class NeuralMemoryState(NamedTuple):
    weights: tuple[torch.Tensor, ...]  # W₀ at the unfinished chunk's start, each (B, H, in, out)
    momentum: tuple[torch.Tensor, ...]  # S₀ at the same point, same shapes
    k: torch.Tensor  # (B, P, H, K): keys of the P < C tokens of the unfinished chunk
    v: torch.Tensor  # (B, P, H, V)
    theta: torch.Tensor  # (B, P, H)
    eta: torch.Tensor  # (B, P, H)
    alpha: torch.Tensor  # (B, P, H)


def initial_state(weights: tuple[torch.Tensor, ...] | list[torch.Tensor], batch_size: int, *,
                  dtype: torch.dtype | None = None) -> NeuralMemoryState:
    """The state before the first token: the initial weights (H, in, out) or (B, H, in, out),
    broadcast over the batch, zero momentum and no unfinished chunk. Gradients flow into the
    initial weights (they are learned by the outer loop)."""
    if len(weights) not in (1, 2):
        raise ValueError(f"the memory has depth 1 or 2 (1 or 2 weight matrices), got "
                         f"{len(weights)}")
    dtype = dtype or compute_dtype(*weights)
    ws = []
    for w in weights:
        if w.dim() == 3:
            w = w.expand(batch_size, *w.shape)
        if w.dim() != 4 or w.shape[0] != batch_size:
            raise ValueError(f"initial weights must be (H, in, out) or (B={batch_size}, H, in, "
                             f"out); got {tuple(w.shape)}")
        ws.append(w.to(dtype))
    H, K, V = ws[0].shape[1], ws[0].shape[2], ws[-1].shape[-1]
    dev = ws[0].device
    return NeuralMemoryState(
        tuple(ws), tuple(torch.zeros_like(w) for w in ws),
        torch.zeros(batch_size, 0, H, K, device=dev, dtype=dtype),
        torch.zeros(batch_size, 0, H, V, device=dev, dtype=dtype),
        *(torch.zeros(batch_size, 0, H, device=dev, dtype=dtype) for _ in range(3)))


def _act(name: str) -> tuple[Callable, Callable]:
    """σ of the depth-2 memory's hidden layer and its backward, (g, a) -> g ⊙ σ'(a)."""
    if name == "gelu":  # exact (erf) GELU; aten's gelu_backward is one op and twice differentiable
        return F.gelu, lambda g, a: torch.ops.aten.gelu_backward(g, a)
    if name == "silu":  # σ(a) = a s(a), σ'(a) = s(a)(1 + a(1 − s(a)))
        def silu_backward(g, a):
            s = torch.sigmoid(a)
            return g * s * (1 + a * (1 - s))
        return F.silu, silu_backward
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


LN_EPS = 1e-5  # the norm_residual wrapper's LayerNorm epsilon (nn.LayerNorm's default)


def _layer_norm(h: torch.Tensor) -> torch.Tensor:
    """LN without a learned scale or bias, over the last dimension."""
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS)


def memory_forward(weights: tuple[torch.Tensor, ...], x: torch.Tensor, *,
                   activation: str = "gelu", norm_residual: bool = False) -> torch.Tensor:
    """M_W(x) for per-(batch, head) weights (B, H, in, out) and x (B, T, H, in) -> (B, T, H, out)
    in the compute dtype, or LN(M_W(x)) + x with ``norm_residual``. A plain read: no update."""
    act = _act(activation)[0]
    dtype = compute_dtype(x, *weights)
    h = x = upcast(x, dtype)
    for i, w in enumerate(weights):
        if i:
            h = act(h)
        h = torch.einsum("bthi,bhio->btho", h, upcast(w, dtype))
    return _layer_norm(h) + x if norm_residual else h


def _check(q, k, v, theta, eta, alpha, state: NeuralMemoryState, chunk_size: int) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError("neural memory expects q, k (B, T, H, K) and v (B, T, H, V); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for name, t in (("theta", theta), ("eta", eta), ("alpha", alpha)):
        if tuple(t.shape) != tuple(q.shape[:3]):
            raise ValueError(f"expected {name} of shape (B, T, H) = {tuple(q.shape[:3])}, got "
                             f"{tuple(t.shape)}")
    if not isinstance(state, NeuralMemoryState):
        raise TypeError("state must be a NeuralMemoryState; build the first one with "
                        "lrm.ops.neural_memory.initial_state(weights, batch_size)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, _, H, K = q.shape
    w0, wl = state.weights[0], state.weights[-1]
    if w0.shape[:3] != (B, H, K) or wl.shape[-1] != v.shape[-1]:
        raise ValueError(f"memory weights {[tuple(w.shape) for w in state.weights]} do not fit "
                         f"q/k (B, T, H, K) = {tuple(q.shape)} and V = {v.shape[-1]}")
    if state.k.shape[1] >= chunk_size:
        raise ValueError(f"the state holds {state.k.shape[1]} pending tokens, but a chunk has "
                         f"only {chunk_size}: was it made with another chunk_size?")


def _prepend_pending(q, k, v, theta, eta, alpha, state, dtype):
    """The unfinished chunk's tokens, then this call's, all in the compute dtype. The pending
    tokens get zero queries: their outputs were emitted by the previous call."""
    P = state.k.shape[1]
    q, k, v, theta, eta, alpha = (upcast(t, dtype) for t in (q, k, v, theta, eta, alpha))
    if P:
        q = torch.cat([q.new_zeros(q.shape[0], P, *q.shape[2:]), q], 1)
        k, v, theta, eta, alpha = (torch.cat([upcast(s, dtype), t], 1) for s, t in zip(
            (state.k, state.v, state.theta, state.eta, state.alpha), (k, v, theta, eta, alpha),
            strict=True))
    return P, q, k, v, theta, eta, alpha


# ----------------------------------------------------------------------------- stabilisers

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Muon's quintic (Jordan et al., 2024)
NS_STEPS = 5
NS_EPS = 1e-7  # floor of ‖G‖_F in X₀ = G / max(‖G‖_F, ε)


def _check_stabilisers(max_grad_norm: float | None) -> None:
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm is the soft cap c on each token's gradient norm and "
                         f"must be > 0 (or None for no cap); got {max_grad_norm}")


def _check_norm_residual(norm_residual: bool, k: torch.Tensor, v: torch.Tensor) -> None:
    if norm_residual and k.shape[-1] != v.shape[-1]:
        raise ValueError(f"norm_residual adds the input to the memory's output, LN(M(x)) + x, so "
                         f"the value width must equal the key width; got K={k.shape[-1]}, "
                         f"V={v.shape[-1]} (use norm_residual=False)")


def soft_clamp_factor(n: torch.Tensor, c: float) -> torch.Tensor:
    """tanh(n/c) / (n/c), the factor that takes a gradient of norm n ≥ 0 to norm c tanh(n/c);
    1 at n = 0. r = n/c is floored at 10⁻¹²: below it tanh(r)/r is 1 to any float's precision
    (1 − r²/3), and the floor keeps the value and the backward finite at n = 0."""
    r = (n / c).clamp_min(1e-12)
    return torch.tanh(r) / r


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """NS_steps(G) for matrices g (..., m, n): X₀ = G / max(‖G‖_F, ε), then
    X ← aX + (b XXᵀ + c (XXᵀ)²) X. The matrix iteration, for any rank (the token loop's)."""
    a, b, c = NS_COEFFS
    x = g / torch.linalg.matrix_norm(g).clamp(min=NS_EPS)[..., None, None]
    for _ in range(steps):
        A = x @ x.transpose(-1, -2)
        x = a * x + (b * A + c * A @ A) @ x
    return x


def _rank_one_factor(n: torch.Tensor, max_grad_norm: float | None,
                     normalize: bool) -> torch.Tensor:
    """The scalar f with 𝒯(x ⊗ δ) = f · (x ⊗ δ) for a rank-one gradient of norm n = ‖x‖‖δ‖: the
    closed form of :func:`_transform_grad` that the parallel form applies to δ."""
    f = torch.ones_like(n) if max_grad_norm is None else soft_clamp_factor(n, max_grad_norm)
    if normalize:
        n = n * f
        a, b, c = NS_COEFFS
        floor = n.clamp(min=NS_EPS)
        sigma = n / floor  # the only singular value of X₀
        for _ in range(NS_STEPS):
            sigma = a * sigma + b * sigma ** 3 + c * sigma ** 5
        f = f * sigma / floor
    return f


def _transform_grad(g: torch.Tensor, max_grad_norm: float | None,
                    normalize: bool) -> torch.Tensor:
    """𝒯(G) on gradient matrices g (B, H, in, out), each with its own norm (the token loop's)."""
    if max_grad_norm is not None:
        g = g * soft_clamp_factor(torch.linalg.matrix_norm(g), max_grad_norm)[..., None, None]
    if normalize:
        g = newton_schulz(g)
    return g


# ----------------------------------------------------------------------------- the oracle


def neural_memory_recurrent_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, eta: torch.Tensor,
    alpha: torch.Tensor, state: NeuralMemoryState, *, chunk_size: int = 16,
    activation: str = "gelu", max_grad_norm: float | None = None, normalize_surprise: bool = False,
    norm_residual: bool = False,
) -> tuple[torch.Tensor, NeuralMemoryState]:
    """The paper's loop, token by token; the gradient of ℓ comes from ``torch.func.grad`` (not
    the hand-derived outer products of the parallel form). Slow; the oracle for tests.

    Returns y (B, T, H, V) in v's dtype and the state after the last token.
    """
    _check(q, k, v, theta, eta, alpha, state, chunk_size)
    _check_stabilisers(max_grad_norm)
    _check_norm_residual(norm_residual, k, v)
    dtype, out_dtype = compute_dtype(q, k, v, theta, eta, alpha, *state.weights), v.dtype
    P, q, k, v, theta, eta, alpha = _prepend_pending(q, k, v, theta, eta, alpha, state, dtype)
    T = q.shape[1]
    read = {"activation": activation, "norm_residual": norm_residual}

    def loss(ws, k_t, v_t):  # Σ over (batch, head) of ℓ: each head's weights get its own ∇ℓ
        pred = memory_forward(ws, k_t[:, None], **read)[:, 0]
        return (pred - v_t).square().sum()

    grad = torch.func.grad(loss)
    W = tuple(upcast(w, dtype) for w in state.weights)
    S = tuple(upcast(s, dtype) for s in state.momentum)
    W_start, S_start, start = W, S, 0  # the chunk's start: where the gradients are taken
    outs = []
    for t in range(T):
        if t % chunk_size == 0:
            W_start, S_start, start = W, S, t
        g = [_transform_grad(gi, max_grad_norm, normalize_surprise)
             for gi in grad(W_start, k[:, t], v[:, t])]
        th, et, al = (x[:, t, :, None, None] for x in (theta, eta, alpha))
        S = tuple(et * s - th * gi for s, gi in zip(S, g, strict=True))
        W = tuple((1 - al) * w + s for w, s in zip(W, S, strict=True))
        outs.append(memory_forward(W, q[:, t:t + 1], **read))
    if T % chunk_size == 0:
        W_start, S_start, start = W, S, T
    y = torch.cat(outs, 1)[:, P:]
    new = NeuralMemoryState(W_start, S_start, k[:, start:], v[:, start:], theta[:, start:],
                            eta[:, start:], alpha[:, start:])
    return y.to(out_dtype), new


# ----------------------------------------------------------------------------- parallel form


def _to_chunks(x: torch.Tensor, C: int, pad_value: float = 0.0) -> torch.Tensor:
    """(B, T, H, ...) -> (B, H, N, C, ...), padded at the end to N·C tokens."""
    x = x.movedim(2, 1)  # (B, H, T, ...)
    pad = (-x.shape[2]) % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad), value=pad_value)
    return x.reshape(*x.shape[:2], -1, C, *x.shape[3:])


def _segment_products(x: torch.Tensor) -> torch.Tensor:
    """x (..., C) -> Π (..., C, C) with Π[t, i] = Π_{l=i+1..t} x_l for i ≤ t, 0 above.

    Products, not exp(cumsum(log x)): η = 0 or α = 1 are allowed and exact (no log 0)."""
    C = x.shape[-1]
    idx = torch.arange(C, device=x.device)
    later = idx[:, None] > idx[None, :]  # l > i: the factor x_l enters column i
    prod = torch.where(later, x[..., :, None], torch.ones_like(x[..., :, None])).cumprod(-2)
    return prod.masked_fill(idx[:, None] < idx[None, :], 0.0)


class _SegmentProducts(torch.autograd.Function):
    """:func:`_segment_products` with a backward of one C×C product per chunk (autograd's
    zero-safe ``cumprod`` backward takes flips, cumsums, exps and masks over the same tensors,
    where this takes one product and a sum). With Π[t, i] = Π_{l=i+1..t} x_l, the factor x_l
    enters Π[t, i] for i < l ≤ t, and ∂Π[t, i]/∂x_l = Π[l−1, i] Π[t, l] (no division, so
    x_l = 0 is exact):

        ∂L/∂x_l = Σ_t Π[t, l] R[t, l],   R = G Π↓ᵀ,   Π↓[l, i] = Π[l−1, i] (row 0: zeros)

    where G = ∂L/∂Π; Π[t, l] = 0 for t < l and Π↓[l, i] = 0 for i ≥ l keep the sums to the
    pairs that hold x_l."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        prod = _segment_products(x)
        ctx.save_for_backward(prod)
        return prod

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (prod,) = ctx.saved_tensors
        shifted = F.pad(prod[..., :-1, :], (0, 0, 1, 0))  # Π↓: row l holds Π[l−1, ·]
        return (prod * (grad @ shifted.transpose(-1, -2))).sum(-2)


def neural_memory_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, eta: torch.Tensor,
    alpha: torch.Tensor, state: NeuralMemoryState, *, chunk_size: int = 16,
    activation: str = "gelu", max_grad_norm: float | None = None, normalize_surprise: bool = False,
    norm_residual: bool = False,
) -> tuple[torch.Tensor, NeuralMemoryState]:
    """The chunk-parallel form (see the module docstring); same contract as the recurrent ref.

    Returns y (B, T, H, V) in v's dtype and the state after the last token.
    """
    _check(q, k, v, theta, eta, alpha, state, chunk_size)
    _check_stabilisers(max_grad_norm)
    _check_norm_residual(norm_residual, k, v)
    dtype, out_dtype = compute_dtype(q, k, v, theta, eta, alpha, *state.weights), v.dtype
    P, q, k, v, theta, eta, alpha = _prepend_pending(q, k, v, theta, eta, alpha, state, dtype)
    T, C, depth = q.shape[1], chunk_size, len(state.weights)
    n_full = T // C
    act, act_backward = _act(activation)
    stabilise = max_grad_norm is not None or normalize_surprise

    def surprise(h, k_n, v_n):  # ∂ℓ/∂M(k_i) at the MLP's output h_i = M_{W₀}(k_i)
        if not norm_residual:
            return 2 * (h - v_n)
        # ℓ = ‖LN(h) + k − v‖²: the LayerNorm's backward of r = 2(LN(h) + k − v)
        mu = h.mean(-1, keepdim=True)
        rstd = torch.rsqrt(h.var(-1, unbiased=False, keepdim=True) + LN_EPS)
        n_ = (h - mu) * rstd
        r = 2 * (n_ + k_n - v_n)
        return (r - r.mean(-1, keepdim=True) - n_ * (r * n_).mean(-1, keepdim=True)) * rstd

    def transformed(x_norm, delta):  # 𝒯(x_i ⊗ δ_i) = x_i ⊗ (f_i δ_i), per token, head, batch row
        n = x_norm * torch.linalg.vector_norm(delta, dim=-1)  # ‖x_i ⊗ δ_i‖_F = ‖x_i‖ ‖δ_i‖
        return delta * _rank_one_factor(n, max_grad_norm, normalize_surprise)[..., None]

    # per-chunk tensors for all chunks at once: (B, H, N, C, ·); padded tokens have θ = 0,
    # η = 1, α = 0 (they change nothing) and are dropped from the output
    qc, kc, vc = (_to_chunks(t, C) for t in (q, k, v))
    th, et = _to_chunks(theta, C), _to_chunks(eta, C, 1.0)
    keep = 1 - _to_chunks(alpha, C)  # 1 − α
    E_bar = _SegmentProducts.apply(et)  # Ē[t, i] = Π_{l=i+1..t} η_l
    A_bar = _SegmentProducts.apply(keep)  # Ā[t, j] = Π_{l=j+1..t} (1 − α_l)
    E0 = et.cumprod(-1)  # Ē[t, 0]: momentum S₀ carried to token t
    A0 = keep.cumprod(-1)  # Ā[t, 0]: weights W₀ carried to token t
    m = A_bar @ E_bar  # m[t, i] = Σ_{i≤j≤t} Ā[t, j] Ē[j, i]: u_i's share of W_t
    c = (A_bar @ E0[..., None])[..., 0]  # c_t = Σ_{j≤t} Ā[t, j] Ē[j, 0]: S₀'s share of W_t
    mth = m * (-th[..., None, :])  # −θ_i m[t, i]: the read's coefficients of the gradients
    w_end = mth[..., -1, :, None]  # (B, H, N, C, 1): into W at the chunk's end
    s_end = (E_bar[..., -1, :] * -th)[..., None]  # into S at the chunk's end
    # the chunk's end maps its start (W₀, S₀) to (Ā W₀ + c S₀, Ē S₀): a 2×2 matrix per chunk
    a_end, c_end, e_end = A0[..., -1], c[..., -1], E0[..., -1]  # (B, H, N)
    carry = torch.stack([torch.stack([a_end, c_end], -1),
                         torch.stack([torch.zeros_like(e_end), e_end], -1)], -2)  # (B,H,N,2,2)
    qk = qc @ kc.transpose(-1, -2)  # (B, H, N, C, C)
    read_k = mth * qk  # first layer's read scores
    # the read of W_t = Ā W₀ + c S₀ + ... as one product: [Ā q ‖ c q] @ [W₀ ; S₀]
    q_read = torch.cat([A0[..., None] * qc, c[..., None] * qc], -1)  # (B, H, N, C, 2K)
    # the chunk's gradients into W and S as one product: [w_end k ‖ s_end k]ᵀ @ δ
    k_write = torch.cat([w_end * kc, s_end * kc], -1)  # (B, H, N, C, 2K)
    k_norm = torch.linalg.vector_norm(kc, dim=-1)  # ‖k_i‖ (B, H, N, C), for the stabilisers

    # weights and momentum stacked along the input dimension, [W ; S] (B, H, 2·in, out): the
    # reads above multiply it at once, the update below maps it with the chunk's 2×2 carry
    WS = [torch.cat([upcast(w, dtype), upcast(s_, dtype)], -2)
          for w, s_ in zip(state.weights, state.momentum, strict=True)]
    dims_in = [w.shape[-2] for w in state.weights]
    outs = []
    # unbind, not indexing: the backward of one unbind is one stack (see lrm.ops.delta_rule)
    per_chunk = (q_read, k_write, kc, vc, k_norm, A0, c, mth, read_k, w_end, s_end, carry)
    for n, (qr_n, kw_n, k_n, v_n, kn_n, A_n, c_n, mth_n, rk_n, we_n, se_n, carry_n) in (
            enumerate(zip(*(t.unbind(2) for t in per_chunk), strict=True))):
        if depth == 1:
            (WS1,) = WS
            W1 = WS1[..., :dims_in[0], :]
            delta = surprise(k_n @ W1, k_n, v_n)  # ∂ℓ/∂M(k_i) (B, H, C, V)
            if stabilise:
                delta = transformed(kn_n, delta)
            outs.append(qr_n @ WS1 + rk_n @ delta)
            updates = [kw_n.transpose(-1, -2) @ delta]  # (B, H, 2K, V): [into W ; into S]
        else:
            WS1, WS2 = WS
            W1, W2 = WS1[..., :dims_in[0], :], WS2[..., :dims_in[1], :]
            a = k_n @ W1  # (B, H, C, F)
            z = act(a)
            delta2 = surprise(z @ W2, k_n, v_n)  # ∂ℓ/∂M(k_i)
            delta1 = act_backward(delta2 @ W2.transpose(-1, -2), a)  # ∂ℓ/∂a_i
            if stabilise:
                delta1 = transformed(kn_n, delta1)
                delta2 = transformed(torch.linalg.vector_norm(z, dim=-1), delta2)
            zq = act(qr_n @ WS1 + rk_n @ delta1)  # σ(q_t W₁,t)
            zq_read = torch.cat([A_n[..., None] * zq, c_n[..., None] * zq], -1)
            read_z = mth_n * (zq @ z.transpose(-1, -2))
            outs.append(zq_read @ WS2 + read_z @ delta2)
            z_write = torch.cat([we_n * z, se_n * z], -1)  # (B, H, C, 2F)
            updates = [kw_n.transpose(-1, -2) @ delta1, z_write.transpose(-1, -2) @ delta2]
        if n < n_full:  # the unfinished last chunk keeps its start in the state
            # [W ; S] ← carry · [W₀ ; S₀] + Σ_i coef_i x_iᵀ δ_i (the chunk's gradients)
            WS = [rearrange(carry_n @ rearrange(ws, "b h (two i) o -> b h two (i o)", two=2),
                            "b h two (i o) -> b h (two i) o", i=d_in) + u
                  for ws, u, d_in in zip(WS, updates, dims_in, strict=True)]
    y = rearrange(torch.stack(outs, 2), "b h n c v -> b (n c) h v")[:, P:T]
    if norm_residual:  # the read is LN(M_{W_t}(q_t)) + q_t
        y = _layer_norm(y) + q[:, P:]
    start = n_full * C
    W = tuple(ws[..., :d_in, :] for ws, d_in in zip(WS, dims_in, strict=True))
    S = tuple(ws[..., d_in:, :] for ws, d_in in zip(WS, dims_in, strict=True))
    new = NeuralMemoryState(W, S, k[:, start:], v[:, start:], theta[:, start:],
                            eta[:, start:], alpha[:, start:])
    return y.to(out_dtype), new


def neural_memory(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, eta: torch.Tensor,
    alpha: torch.Tensor, state: NeuralMemoryState, *, chunk_size: int = 16,
    activation: str = "gelu", max_grad_norm: float | None = None, normalize_surprise: bool = False,
    norm_residual: bool = False, backend: str = "auto",
) -> tuple[torch.Tensor, NeuralMemoryState]:
    """Dispatching neural memory; same contract as :func:`neural_memory_ref`. No kernel package
    implements this memory, so every backend runs the reference (``backend="kernel"`` is an
    error)."""
    if backend not in ("auto", "ref", "kernel"):
        raise ValueError(f"backend must be 'auto', 'ref' or 'kernel', got {backend!r}")
    if backend == "kernel":
        raise RuntimeError("no kernel implements the Titans neural memory; use backend='auto' "
                           "or 'ref' (the chunk-parallel PyTorch form runs on any device)")
    return neural_memory_ref(q, k, v, theta, eta, alpha, state, chunk_size=chunk_size,
                             activation=activation, max_grad_norm=max_grad_norm,
                             normalize_surprise=normalize_surprise, norm_residual=norm_residual)
