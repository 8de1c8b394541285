"""The gated delta rule (Gated DeltaNet) and its GDN-2 generalisation.

Gated delta rule (Yang, Kautz & Hatamizadeh, ICLR 2025), per head, with the state stored as
fla stores it, h ∈ ℝ^{K×V} (the transpose of the paper's S ∈ ℝ^{V×K}):

    h_t = α_t (I − β_t k_t k_tᵀ) h_{t−1} + β_t k_t v_tᵀ
    o_t = h_tᵀ (scale · q_t)

(the paper's S_t = α_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t, with S = hᵀ).

α_t = exp(g_t) ∈ (0, 1] forgets; β_t ∈ (0, 1) is the learning rate of one step of online
regression on ‖h_{t−1}ᵀ k_t − v_t‖² (the delta rule). α ≡ 1 is DeltaNet; dropping the
−β k kᵀ term is Mamba-2-style gated linear attention.

Gated DeltaNet-2 (GDN-2; fla ``ops/gdn2/naive.py`` and NVlabs/GatedDeltaNet-2) splits β into a
channel-wise erase gate b_t ∈ [0,1]^K on the key side and a write gate w_t ∈ [0,1]^V on the value
side, and makes the decay channel-wise, g_t ∈ ℝ^K (log space):

    h_t = (I − k_t (b_t ⊙ k_t)ᵀ) Diag(exp(g_t)) h_{t−1} + k_t (w_t ⊙ v_t)ᵀ

b = w = β·1 and g = g·1 give the gated delta rule back (tested); b = β·1 = w alone is KDA.

Symbols: B batch, T length, H heads, K key head dim, V value head dim, C chunk size,
N = ⌈T/C⌉ chunks, gc the cumulative log-decay inside a chunk.

Chunkwise algorithm (the paper's §3 / fla's chunk kernels). Write h₀ for the state entering a
chunk and v_newᵢ for the value actually written at step i (v_new = β(v − h'ᵀk) with h' the
decayed state before step i). Unrolling the recurrence inside the chunk gives

    (I + A) V_new = B_v − W_k h₀,   A_ij = β_i Γ_ij k_iᵀk_j (j < i),  Γ_ij = exp(gc_i − gc_j)

with B_v = diag(β) V and W_k = diag(β) (exp(gc) ⊙ K). Solving the unit-lower-triangular system
once per chunk (the "UT transform", giving the WY representation U = (I+A)⁻¹ B_v,
W = (I+A)⁻¹ W_k) leaves V_new = U − W h₀, and then

    O  = (exp(gc) ⊙ Q) h₀ + tril(Γ ⊙ Q Kᵀ) V_new
    h_C = exp(gc_C) h₀ + (exp(gc_C − gc) ⊙ K)ᵀ V_new

Everything inside chunks is batched over all chunks at once; only the last three lines run in
a Python loop over the N chunks (the state recurrence). Every exponent is a difference
gc_i − gc_j with i ≥ j, so it is ≤ 0 and never overflows (entries with i < j are masked to −∞
*before* exp, so their gradients are 0, not NaN). GDN-2 is the same with K-channel decays:
A_ij = Σ_c b_ic k_ic k_jc exp(gc_ic − gc_jc); to keep every exponent ≤ 0 without forming a
(C, C, K) tensor per chunk, its columns are built in a loop over j ∈ [0, C) (chunk size, not T).

Implementations, for each of the two rules: ``*_recurrent_ref`` (the loop, the oracle),
``*_ref`` (the chunkwise algorithm above, pure PyTorch), ``*_lean`` (``*_ref`` with block
recomputation, the memory-lean path) and the dispatch :func:`gated_delta_rule` / :func:`gdn2`
(an fla kernel on CUDA; on a CPU the gated delta rule picks the reference or the lean path
and its chunk by shape, section "the CPU path" below; GDN-2 takes the lean path). All take
``initial_state`` and ``return_final_state`` and return (o, final state or None).

Kernels (CUDA, flash-linear-attention): ``chunk_gated_delta_rule`` for training/prefill,
``fused_recurrent_gated_delta_rule`` for short no-grad calls (decoding; it has no backward);
``chunk_gdn2``/``fused_recurrent_gdn2`` for GDN-2. Both take q/k already normalised here
(``use_qk_l2norm_in_kernel`` stays False: normalisation is the mixer's job), g in natural-log
space, scale defaulting to K^-1/2, states (B, H, K, V) in fp32 (fla spells
``return_final_state`` as ``output_final_state``): the same contract as the refs,
which compute in promote(input dtypes, float32) (:mod:`lrm.dtypes`), so float64 stays float64.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from lrm.dtypes import compute_dtype, upcast
from lrm.ops import _kernels
from lrm.ops.recompute import block_recompute

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- checks


def _check(q, k, v, gates: dict[str, tuple[torch.Tensor, tuple[int, ...]]],
           initial_state: torch.Tensor | None, op: str) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: expected q, k (B, T, H, K) and v (B, T, H, V); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for name, (t, shape) in gates.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: expected {name} of shape {shape}, got {tuple(t.shape)}")
    B, _, H, K = q.shape
    if initial_state is not None and tuple(initial_state.shape) != (B, H, K, v.shape[-1]):
        raise ValueError(f"{op}: expected initial_state (B, H, K, V) = "
                         f"{(B, H, K, v.shape[-1])}, got {tuple(initial_state.shape)}")


def _to_chunks(x: torch.Tensor, C: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, T, H, ...) -> (B, H, N, C, ...) in ``dtype`` (default: x's compute dtype),
    zero-padded to N·C steps.

    A padded step has k = 0 (and β = 0, g = 0, b = w = 0), so it leaves the state unchanged.
    """
    x = upcast(x, compute_dtype(x) if dtype is None else dtype).movedim(2, 1)  # (B, H, T, ...)
    T = x.shape[2]
    pad = (-T) % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(*x.shape[:2], -1, C, *x.shape[3:])


def _from_chunks(o: torch.Tensor, T: int) -> torch.Tensor:
    """(B, H, N, C, V) -> (B, T, H, V)."""
    return o.flatten(2, 3)[:, :, :T].movedim(1, 2)


def _across_chunks(qg, kd, w, u, attn, decay_last, h):
    """The state recurrence over chunks (the only loop).

    qg (B,H,N,C,K) = q ⊙ exp(gc); kd = k ⊙ exp(gc_C − gc); w (B,H,N,C,K), u (B,H,N,C,V): the
    WY factors; attn (B,H,N,C,C): the causal intra-chunk scores; decay_last (B,H,N,K or 1):
    exp(gc_C); h (B,H,K,V): the state entering the first chunk.
    """
    outs = []
    # unbind, not u[:, :, n]: the backward of one unbind is one stack, whereas each indexing
    # would allocate a zero gradient the size of the whole tensor (O(N²) in the backward)
    for q_n, k_n, w_n, u_n, a_n, d_n in zip(*(t.unbind(2) for t in (qg, kd, w, u, attn,
                                                                     decay_last)),
                                            strict=True):
        v_new = u_n - w_n @ h  # (B, H, C, V): what the chunk really writes
        outs.append(q_n @ h + a_n @ v_new)
        h = d_n[..., None] * h + k_n.transpose(-1, -2) @ v_new
    return torch.stack(outs, dim=2), h


def _ut_solve(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(I + A)⁻¹ rhs for strictly lower-triangular A (B,H,N,C,C): the UT transform."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.linalg.solve_triangular(A + eye, rhs, upper=False, unitriangular=True)


# ----------------------------------------------------------------------------- gated delta rule


def gated_delta_rule_recurrent_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The paper's recurrence, token by token, in the compute dtype. The oracle for tests.

    q, k (B, T, H, K); v (B, T, H, V); g = log α and beta (B, T, H); initial_state
    (B, H, K, V). Returns o (B, T, H, V) in v's dtype and the final state (in the compute
    dtype) or None.
    """
    _check(q, k, v, {"g": (g, q.shape[:3]), "beta": (beta, q.shape[:3])}, initial_state,
           "gated_delta_rule_recurrent_ref")
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, g, beta, initial_state)
    qf, kf, vf, gf, bf = (upcast(t, dtype) for t in (q, k, v, g, beta))
    h = (qf.new_zeros(B, H, K, v.shape[-1]) if initial_state is None
         else upcast(initial_state, dtype))
    outs = []
    for t in range(T):
        k_t, b_t = kf[:, t], bf[:, t, :, None]  # (B, H, K), (B, H, 1)
        h = gf[:, t].exp()[..., None, None] * h  # forget
        v_new = b_t * (vf[:, t] - torch.einsum("bhk,bhkv->bhv", k_t, h))  # delta: β(v − hᵀk)
        h = h + k_t[..., None] * v_new[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qf[:, t] * scale, h))
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(v.shape)
    return o.to(v.dtype), (h if return_final_state else None)


def gated_delta_rule_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False, chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunkwise (WY / UT-transform) gated delta rule; same contract as the recurrent ref.

    Memory is O(T·C) for the intra-chunk scores, never O(T²).
    """
    _check(q, k, v, {"g": (g, q.shape[:3]), "beta": (beta, q.shape[:3])}, initial_state,
           "gated_delta_rule_ref")
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    C = max(1, min(chunk_size, T))  # a decode step (T = 1) is a chunk of one, not 64
    dtype = compute_dtype(q, k, v, g, beta, initial_state)
    qc, kc, vc = (_to_chunks(t, C, dtype) for t in (q, k, v))  # (B, H, N, C, K|V)
    qc = qc * scale
    gc = _to_chunks(g, C, dtype).cumsum(-1)  # (B, H, N, C): log decay from the chunk start
    bc = _to_chunks(beta, C, dtype)  # (B, H, N, C)

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # Γ_ij = exp(gc_i − gc_j) for j ≤ i; masked before exp so the exponent is always ≤ 0
    gamma = (gc[..., :, None] - gc[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    kk = kc @ kc.transpose(-1, -2)  # (B, H, N, C, C)
    A = (bc[..., None] * gamma * kk).tril(-1)  # A_ij = β_i Γ_ij k_iᵀk_j, j < i
    rhs = torch.cat([bc[..., None] * gc.exp()[..., None] * kc, bc[..., None] * vc], dim=-1)
    w, u = _ut_solve(A, rhs).split([K, v.shape[-1]], dim=-1)  # WY factors W (..K), U (..V)

    attn = gamma * (qc @ kc.transpose(-1, -2))  # tril(Γ ⊙ Q Kᵀ), diagonal included
    qg = qc * gc.exp()[..., None]
    kd = kc * (gc[..., -1:] - gc).exp()[..., None]
    h0 = (qc.new_zeros(B, H, K, v.shape[-1]) if initial_state is None
          else upcast(initial_state, dtype))
    o, h = _across_chunks(qg, kd, w, u, attn, gc[..., -1:].exp(), h0)
    return _from_chunks(o, T).to(v.dtype), (h if return_final_state else None)


def gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatching gated delta rule; same contract as :func:`gated_delta_rule_ref`.

    On CUDA with fla: ``fused_recurrent_gated_delta_rule`` when no gradient is needed and
    T ≤ 64 (decoding, as fla's layer does), else ``chunk_gated_delta_rule``. On a CPU, with
    the chunk of :func:`cpu_chunk_size`: :func:`gated_delta_rule_ref` on small shapes,
    :func:`gated_delta_rule_lean` beyond SMALL_ELEMENTS (section "the CPU path" below).
    """
    _check(q, k, v, {"g": (g, q.shape[:3]), "beta": (beta, q.shape[:3])}, initial_state,
           "gated_delta_rule")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state))
    name = ("fused_recurrent_gated_delta_rule" if not needs_grad and q.shape[1] <= 64
            else "chunk_gated_delta_rule")
    ok = q.dtype in _KERNEL_DTYPES and q.shape[-1] <= 256 and q.dtype == k.dtype == v.dtype
    why = "fla needs K <= 256 and q, k, v of one dtype among fp32/fp16/bf16"
    blocked = needs_grad and q.is_cuda and _kernels.fla_gated_bwd_blocked(q.device.index or 0)
    if ok and blocked:
        ok, why = False, blocked
        if _kernels.resolve_backend(backend) == "auto":
            warnings.warn(f"gated_delta_rule runs on the PyTorch reference: {blocked}",
                          stacklevel=2)
    if _kernels.use_kernel("gated_delta_rule", backend, name, q, k, v, g, beta, initial_state,
                           supported=ok, why_unsupported=why):
        fn = _kernels.get(name)
        h0 = None if initial_state is None else initial_state.to(torch.float32)
        # by keyword: fused_recurrent's positional order is (q, k, v, g, gk, gv, beta, ...)
        o, h = fn(q=q, k=k, v=v, g=g.to(torch.float32), beta=beta.to(q.dtype), scale=scale,
                  initial_state=h0, output_final_state=return_final_state)
        return o.to(v.dtype), h
    # the CPU path, chosen by shape (see "the CPU path" below)
    B, T, H, K = q.shape
    C = cpu_chunk_size(K, B * H)
    if B * H * T * (K + v.shape[-1] + C) <= SMALL_ELEMENTS:
        return gated_delta_rule_ref(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                    return_final_state=return_final_state, chunk_size=C)
    return gated_delta_rule_lean(q, k, v, g, beta, scale=scale,
                                 initial_state=initial_state,
                                 return_final_state=return_final_state, chunk_size=C)


# ----------------------------------------------------------------------------- the CPU path
#
# The chunkwise algorithm's cost per token and head is about C·(K + V) for the intra-chunk
# scores and the UT solve, plus K·V for the state products (independent of C), plus a Python
# loop over T/C chunks; small C also keeps the (C, C) blocks of a batched solve in cache.
# Measured (one thread, batch 32, one head of K = d and V = 2d as the recall arena builds
# gdn, forward and backward of the op; docs/bench/speed.md "Small shapes: gdn"), the best C
# is 16 for K <= 32, 32 for K <= 128 (64 ties at 128), and 64 (the kernels' chunk) beyond:
# 1.3-1.8x faster than C = 64 through the block recomputation at L = 128-512. With few rows
# (B·H < 8, e.g. batch 1 and 3 heads of K = 16) each op is tiny and the Python loop over chunks
# weighs more: there C = 32 ran 1.45x faster than C = 16 at T = 2K and 16K. The block
# recomputation of :func:`gated_delta_rule_lean` costs about one more forward pass (15-35% of
# the op); it is skipped while B·H·T·(K + V + C), the size of the per-token intermediates
# that the reference keeps (each of them a fraction of it), is at most SMALL_ELEMENTS (e.g.
# batch 32, d 128, L 512; or d 32, L 2048). Both choices depend on the shape only.

SMALL_ELEMENTS = 2**23  # the largest B·H·T·(K + V + C) run without block recomputation


def cpu_chunk_size(head_k_dim: int, rows: int = 32) -> int:
    """The chunk of the gated delta rule's CPU path for key heads of ``head_k_dim`` and
    ``rows`` = batch × heads (see "the CPU path" above)."""
    if head_k_dim <= 32 and rows >= 8:
        return 16
    return 32 if head_k_dim <= 128 else 64


# ----------------------------------------------------------------------------- GDN-2


def _gdn2_shapes(q, v) -> dict[str, tuple[int, ...]]:
    return {"g": tuple(q.shape), "b": tuple(q.shape), "w": tuple(v.shape)}


def gdn2_recurrent_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
    w: torch.Tensor, *, scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GDN-2 token by token, in the compute dtype: the oracle.

    q, k, g (log decay), b (erase gate) (B, T, H, K); v, w (write gate) (B, T, H, V).
    """
    shapes = _gdn2_shapes(q, v)
    _check(q, k, v, {n: (t, shapes[n]) for n, t in (("g", g), ("b", b), ("w", w))},
           initial_state, "gdn2_recurrent_ref")
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, g, b, w, initial_state)
    qf, kf, vf, gf, bf, wf = (upcast(t, dtype) for t in (q, k, v, g, b, w))
    h = (qf.new_zeros(B, H, K, v.shape[-1]) if initial_state is None
         else upcast(initial_state, dtype))
    outs = []
    for t in range(T):
        k_t = kf[:, t]
        h = gf[:, t].exp()[..., None] * h  # channel-wise decay along K
        erase = torch.einsum("bhk,bhkv->bhv", bf[:, t] * k_t, h)  # read at the gated key
        h = h + k_t[..., None] * (wf[:, t] * vf[:, t] - erase)[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qf[:, t] * scale, h))
    o = torch.stack(outs, dim=1) if outs else vf.new_zeros(v.shape)
    return o.to(v.dtype), (h if return_final_state else None)


def gdn2_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
    w: torch.Tensor, *, scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False, chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise GDN-2 (WY / UT transform with channel-wise decay); same contract as the
    recurrent ref.

    The decayed key products are built column by column (a loop over the C positions of a
    chunk, batched over all chunks), so every exponent stays ≤ 0 and no (C, C, K) tensor per
    chunk is formed in the forward pass; autograd still saves O(T·C·K) for the backward, which
    is why the default chunk is 16 rather than 64 (the work of the column loop grows as T·C·K).
    """
    shapes = _gdn2_shapes(q, v)
    _check(q, k, v, {n: (t, shapes[n]) for n, t in (("g", g), ("b", b), ("w", w))},
           initial_state, "gdn2_ref")
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    C = max(1, min(chunk_size, T))
    dtype = compute_dtype(q, k, v, g, b, w, initial_state)
    qc, kc, vc, bc, wc = (_to_chunks(t, C, dtype) for t in (q, k, v, b, w))
    qc = qc * scale
    gc = _to_chunks(g, C, dtype).cumsum(-2)  # (B, H, N, C, K)
    bk = bc * kc

    pos = torch.arange(C, device=q.device)
    a_cols, s_cols = [], []
    for j in range(C):
        # row i: k_j ⊙ exp(gc_i − gc_j), zero for i < j (masked to −∞ before exp)
        diff = (gc - gc[..., j:j + 1, :]).masked_fill((pos < j)[:, None], float("-inf"))
        k_j = kc[..., j:j + 1, :] * diff.exp()  # (B, H, N, C, K)
        a_cols.append((bk * k_j).sum(-1))  # A_ij = (b_i ⊙ k_i)ᵀ Diag(exp(gc_i − gc_j)) k_j
        s_cols.append((qc * k_j).sum(-1))  # score_ij = q_iᵀ Diag(exp(gc_i − gc_j)) k_j
    A = torch.stack(a_cols, dim=-1).tril(-1)  # (B, H, N, C, C), strictly lower
    attn = torch.stack(s_cols, dim=-1)  # causal, diagonal included

    rhs = torch.cat([bk * gc.exp(), wc * vc], dim=-1)
    wk, u = _ut_solve(A, rhs).split([K, V], dim=-1)
    qg = qc * gc.exp()
    kd = kc * (gc[..., -1:, :] - gc).exp()
    h0 = qc.new_zeros(B, H, K, V) if initial_state is None else upcast(initial_state, dtype)
    o, h = _across_chunks(qg, kd, wk, u, attn, gc[..., -1, :].exp(), h0)
    return _from_chunks(o, T).to(v.dtype), (h if return_final_state else None)


def gdn2(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
    w: torch.Tensor, *, scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatching GDN-2; same contract as :func:`gdn2_ref`.

    On CUDA with fla: ``fused_recurrent_gdn2`` for no-grad calls with T ≤ 64, else
    ``chunk_gdn2``.
    """
    shapes = _gdn2_shapes(q, v)
    _check(q, k, v, {n: (t, shapes[n]) for n, t in (("g", g), ("b", b), ("w", w))},
           initial_state, "gdn2")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, g, b, w, initial_state))
    name = "fused_recurrent_gdn2" if not needs_grad and q.shape[1] <= 64 else "chunk_gdn2"
    ok = q.dtype in _KERNEL_DTYPES and q.shape[-1] <= 256 and q.dtype == k.dtype == v.dtype
    if _kernels.use_kernel("gdn2", backend, name, q, k, v, g, b, w, initial_state,
                           supported=ok, why_unsupported="fla needs K <= 256 and q, k, v of "
                           "one dtype among fp32/fp16/bf16"):
        fn = _kernels.get(name)
        h0 = None if initial_state is None else initial_state.to(torch.float32)
        # by keyword: fused_recurrent_gdn2 takes (A_log, dt_bias) positionally after w
        o, h = fn(q=q, k=k, v=v, g=g.to(torch.float32), b=b.to(q.dtype), w=w.to(q.dtype),
                  scale=scale, initial_state=h0, output_final_state=return_final_state)
        return o.to(v.dtype), h
    return gdn2_lean(q, k, v, g, b, w, scale=scale, initial_state=initial_state,
                     return_final_state=return_final_state)


# ----------------------------------------------------------------------------- memory-lean path

BLOCK_SIZE = 1024  # tokens per recomputed block of the lean paths (rounded up to whole chunks)


def _lean(ref, seqs, q, v, initial_state, chunk_size, block_size, **kw):
    """Run the chunked reference ``ref`` through :func:`lrm.ops.recompute.block_recompute`:
    the backward pass keeps the inputs and one (B, H, K, V) state per block, and recomputes the
    block's WY factors and scores. Blocks are whole chunks, so the arithmetic is the ref's."""
    B, T, H, K = q.shape
    C = max(1, min(chunk_size, T))
    block = C * max(1, -(-int(block_size) // C))
    dtype = compute_dtype(*seqs)
    h0 = (q.new_zeros(B, H, K, v.shape[-1], dtype=dtype) if initial_state is None
          else upcast(initial_state, dtype))

    def step(*blocks_and_h):
        *blocks, h = blocks_and_h
        return ref(*blocks, initial_state=h, return_final_state=True, chunk_size=C, **kw)

    return block_recompute(step, seqs, [1] * len(seqs), [], h0, block=block, out_dim=1)


def gated_delta_rule_lean(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *,
    scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False, chunk_size: int = 64, block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`gated_delta_rule_ref` with block recomputation (memory O(B·T·H·(K+V)) plus
    one state per block of ``block_size`` tokens, default BLOCK_SIZE, instead of every
    chunk's intermediates). Same contract."""
    _check(q, k, v, {"g": (g, q.shape[:3]), "beta": (beta, q.shape[:3])}, initial_state,
           "gated_delta_rule_lean")
    block_size = BLOCK_SIZE if block_size is None else block_size  # read now: tests shrink it
    o, h = _lean(gated_delta_rule_ref, [q, k, v, g, beta], q, v, initial_state,
                 chunk_size, block_size, scale=scale)
    return o, (h if return_final_state else None)


def gdn2_lean(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
    w: torch.Tensor, *, scale: float | None = None, initial_state: torch.Tensor | None = None,
    return_final_state: bool = False, chunk_size: int = 16, block_size: int = BLOCK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`gdn2_ref` with block recomputation; same contract."""
    shapes = _gdn2_shapes(q, v)
    _check(q, k, v, {n: (t, shapes[n]) for n, t in (("g", g), ("b", b), ("w", w))},
           initial_state, "gdn2_lean")
    o, h = _lean(gdn2_ref, [q, k, v, g, b, w], q, v, initial_state, chunk_size,
                 block_size, scale=scale)
    return o, (h if return_final_state else None)
