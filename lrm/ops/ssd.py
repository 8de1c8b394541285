"""SSD, the state space dual of Mamba-2 (Dao & Gu, 2024): a scalar-decay SSM per head.

For every batch b and head h (head dim P, state size N):

    H_t = exp(Δ_t · a_h) · H_{t-1} + Δ_t · x_t B_tᵀ          H_t: (P, N)
    y_t = H_t C_t + D_h · x_t
    out_t = y_t · silu(z_t)                                     (when z is given)

with Δ = softplus(dt + dt_bias) when ``dt_softplus`` (else dt + dt_bias), clamped to ``dt_limit``.
Unrolled, y = M x with M[t, s] = C_tᵀB_s · exp(Σ_{s<k≤t} Δ_k a) · Δ_s for s ≤ t: masked (decayed)
linear attention with C as query, B as key, x as value. That duality is what the chunked
algorithm uses:

1. intra-chunk (diagonal blocks): the quadratic, attention-like form inside each chunk of Q
   tokens, with L = exp(segsum(Δa)) the (Q, Q) decay mask;
2. chunk states: the state each chunk would leave behind if it started from zero;
3. inter-chunk recurrence: a loop over chunks, H_c = exp(Σ_chunk Δa) H_{c-1} + state_c;
4. output: the off-diagonal blocks, C_t · exp(cumsum Δa)_t · H_{c-1}, added to step 1.

Memory is O(L·Q) for the decay masks and O(L/Q · P·N) for the chunk states; nothing is (L, L).

Symbols and shapes (mamba-ssm's ``mamba_chunk_scan_combined`` conventions):
    x : (B, L, H, P)   dt : (B, L, H)   A : (H,) negative   B, C : (B, L, G, N), head h uses
    group h // (H / G)   D : (H,) or (H, P)   z : (B, L, H, P)   dt_bias : (H,)
    initial_state / final state : (B, H, P, N)   (``return_final_state`` returns the latter)

Implementations: :func:`ssd_recurrent_ref` (the loop, the oracle), :func:`ssd_ref` (the chunked
algorithm above, pure PyTorch), :func:`ssd_lean` (:func:`ssd_ref` with block recomputation, the
memory-lean path) and :func:`ssd` (dispatch to mamba-ssm's Triton ``mamba_chunk_scan_combined``
on CUDA; on a CPU, by shape, :func:`ssd_ref` or :func:`ssd_lean` with a chunk sized for the
CPU: section "the CPU path" below). Not supported here: ``seq_idx`` /
``cu_seqlens`` (packed variable-length batches). The references compute in
promote(input dtypes, float32) (:mod:`lrm.dtypes`): fp32 for half precision, float64 kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from lrm.dtypes import compute_dtype, upcast
from lrm.ops import _kernels
from lrm.ops.recompute import block_recompute

NO_LIMIT = (0.0, math.inf)


def _check(x, dt, A, B, C):
    if x.dim() != 4:
        raise ValueError(f"x must be (B, L, H, P), got {tuple(x.shape)}")
    batch, L, H, _ = x.shape
    if dt.shape != (batch, L, H) or A.shape != (H,):
        raise ValueError(f"dt must be (B, L, H) = {(batch, L, H)} and A ({H},); got "
                         f"{tuple(dt.shape)} and {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, L) or C.shape != B.shape or H % B.shape[2]:
        raise ValueError(f"B and C must be (B, L, G, N) with G dividing H={H}; got "
                         f"{tuple(B.shape)} and {tuple(C.shape)}")


def _discretise_dt(dt, dt_bias, dt_softplus, dt_limit, dtype=None):
    dt = upcast(dt, compute_dtype(dt, dt_bias) if dtype is None else dtype)
    if dt_bias is not None:
        dt = dt + upcast(dt_bias, dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _finish(y, x, D, z, dtype_in):
    """y (B, L, H, P) in the compute dtype -> + D·x, gate with silu(z), back to dtype_in."""
    if D is not None:
        Df = upcast(D, y.dtype)
        y = y + upcast(x, y.dtype) * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(upcast(z, y.dtype))
    return y.to(dtype_in)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T) with out[i, j] = a[j+1] + ... + a[i] for j <= i, and -inf above
    the diagonal, so that exp(segsum(Δa)) is the causal decay mask. Built as a masked cumsum
    rather than a difference of cumsums, which would lose precision when the sums are large."""
    T = a.shape[-1]
    a = repeat(a, "... k -> ... k j", j=T)  # entry [k, j] = a[k]
    strictly_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    out = a.masked_fill(~strictly_below, 0.0).cumsum(dim=-2)  # [i, j] = Σ_{j<k<=i} a[k]
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return out.masked_fill(~causal, -math.inf)


def ssd_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_state=None,
            dt_softplus=False, dt_limit=NO_LIMIT, return_final_state=False):
    """The chunked SSD algorithm in pure PyTorch (in the compute dtype); the contract of
    mamba-ssm's ``mamba_chunk_scan_combined``. Returns out (B, L, H, P) in x's dtype [, final
    states (B, H, P, N) in the compute dtype]."""
    _check(x, dt, A, B, C)
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dtype_in = x.dtype
    dtype = compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_state)
    dt = _discretise_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)
    # Chunks longer than the input only cost padding; Δ = 0 on the padding means "no decay and
    # no write", so the final state is unaffected.
    Q = max(1, min(int(chunk_size), L))
    pad = (-L) % Q
    xf, Bf, Cf = (F.pad(upcast(t, dtype), (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
    dt = F.pad(dt, (0, 0, 0, pad))

    # Δ_s x_s enters both the intra-chunk term and the chunk states: scale x once
    xc = rearrange(xf * dt[..., None], "b (c q) (g h) p -> b c q g h p", q=Q, g=G)
    Bc = rearrange(Bf, "b (c q) g n -> b c q g n", q=Q)
    Cc = rearrange(Cf, "b (c q) g n -> b c q g n", q=Q)
    dtc = rearrange(dt, "b (c q) (g h) -> b g h c q", q=Q, g=G)
    dA = dtc * rearrange(upcast(A, dtype), "(g h) -> g h 1 1", g=G)  # log-decay per step
    A_cum = dA.cumsum(dim=-1)  # (b, g, h, c, q)

    # 1. intra-chunk: y_t = Σ_{s<=t in chunk} (C_t·B_s) exp(Σ_{s<k<=t} Δa) Δ_s x_s
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)
    W = CB[:, :, None] * torch.exp(segsum(dA))  # (b, g, h, c, l, s)
    y_diag = torch.einsum("bghcls,bcsghp->bclghp", W, xc)  # xc holds Δ_s x_s

    # 2. the state each chunk leaves behind when started from zero. The decay scales x before
    # the contraction over q: torch.einsum contracts left to right, and B ⊗ decay first would
    # build a (b, c, q, g, h, n) tensor for nothing
    decay_to_end = rearrange(torch.exp(A_cum[..., -1:] - A_cum), "b g h c q -> b c q g h 1")
    states = torch.einsum("bcqgn,bcqghp->bcghpn", Bc, xc * decay_to_end)

    # 3. inter-chunk recurrence (a loop over L/Q chunks, linear in L)
    if initial_state is None:
        h = xf.new_zeros(batch, G, H // G, P, N)
    else:
        h = rearrange(upcast(initial_state, dtype), "b (g h) p n -> b g h p n", g=G)
    chunk_decay = torch.exp(A_cum[..., -1])  # (b, g, h, c)
    entering = []
    # unbind, not an index per chunk: autograd then stacks the gradients once (O(L))
    for decay, state in zip(chunk_decay.unbind(-1), states.unbind(1), strict=True):
        entering.append(h)
        h = decay[..., None, None] * h + state
    entering = torch.stack(entering, dim=1)  # state before each chunk, (b, c, g, h, p, n)

    # 4. the contribution of the state entering the chunk, decayed to each position
    y_off = torch.einsum("bcqgn,bcghpn->bcqghp", Cc, entering) * rearrange(
        torch.exp(A_cum), "b g h c q -> b c q g h 1")

    y = rearrange(y_diag + y_off, "b c q g h p -> b (c q) (g h) p")[:, :L]
    out = _finish(y, x, D, z, dtype_in)
    if return_final_state:
        return out, rearrange(h, "b g h p n -> b (g h) p n")
    return out


def ssd_recurrent_ref(x, dt, A, B, C, chunk_size=None, D=None, z=None, dt_bias=None,
                      initial_state=None, dt_softplus=False, dt_limit=NO_LIMIT,
                      return_final_state=False):
    """The recurrence token by token, in the compute dtype: the oracle. ``chunk_size`` is
    accepted for a uniform signature and ignored."""
    _check(x, dt, A, B, C)
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dtype = compute_dtype(x, dt, A, B, C, D, z, dt_bias, initial_state)
    dt = _discretise_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)
    Bh = repeat(upcast(B, dtype), "b l g n -> b l (g h) n", h=H // G)
    Ch = repeat(upcast(C, dtype), "b l g n -> b l (g h) n", h=H // G)
    xf, Af = upcast(x, dtype), upcast(A, dtype)
    h = (xf.new_zeros(batch, H, P, N) if initial_state is None
         else upcast(initial_state, dtype))
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * Af)  # (b, H)
        h = decay[..., None, None] * h + torch.einsum(
            "bh,bhp,bhn->bhpn", dt[:, t], xf[:, t], Bh[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    out = _finish(torch.stack(ys, dim=1), x, D, z, x.dtype)
    return (out, h) if return_final_state else out


def ssd(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_state=None,
        dt_softplus=False, dt_limit=NO_LIMIT, return_final_state=False, *,
        backend: str = "auto"):
    """Dispatching SSD: mamba-ssm's Triton ``mamba_chunk_scan_combined`` on CUDA where it
    imports; else, with the chunk of :func:`cpu_chunk_size`, :func:`ssd_ref` on small shapes
    and :func:`ssd_lean` (:func:`ssd_ref` with block recomputation) beyond SMALL_ELEMENTS (see
    "the CPU path" below). Same arguments and results (up to rounding: the chunk differs)."""
    ok = x.dtype in (torch.float32, torch.float16, torch.bfloat16)
    if _kernels.use_kernel("ssd", backend, "mamba_chunk_scan_combined", x, dt, A, B, C, D, z,
                           dt_bias, initial_state, supported=ok,
                           why_unsupported="the kernel needs fp32/fp16/bf16 inputs"):
        fn = _kernels.get("mamba_chunk_scan_combined")
        # the kernel's own names for the state arguments: initial_states, return_final_states
        return fn(x, dt, A.to(torch.float32), B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                  initial_states=initial_state, dt_softplus=dt_softplus,
                  dt_limit=tuple(dt_limit), return_final_states=return_final_state)
    # the CPU path, chosen by shape (see "the CPU path" below): a chunk sized for the CPU,
    # and the block recomputation only where the saved intermediates would be large
    _check(x, dt, A, B, C)
    batch, L, H, P = x.shape
    Q = cpu_chunk_size(P, B.shape[3], chunk_size)
    fn = ssd_ref if batch * H * L * Q <= SMALL_ELEMENTS else ssd_lean
    return fn(x, dt, A, B, C, Q, D, z, dt_bias, initial_state, dt_softplus, dt_limit,
              return_final_state)


# ----------------------------------------------------------------------------- the CPU path
#
# ``chunk_size`` is the GPU kernel's tile (mamba-ssm's default 256). On a CPU the chunked
# algorithm's cost is, per token and head, about Q·(N + P) for the intra-chunk (Q, Q) masks and
# products plus P·N for the chunk states (independent of Q) plus P·N/Q for the loop over chunks;
# the (B, H, L, Q) mask tensors also leave the caches when Q is large. Measured (one thread,
# batch 32, forward and backward of the op, docs/bench/speed.md "Small shapes: mamba2"), the
# best Q grows with the state P·N of a head: 16 up to P·N = 1024, 32 up to 4096, 64 beyond,
# 3-20x faster than Q = 256 at L = 128-2048. The CPU path uses that Q (never more than the
# caller's ``chunk_size``). The block recomputation of :func:`ssd_lean` costs about one more
# forward pass (30-50% of the op at L <= 512); it is skipped while one (B, H, L, Q) tensor has
# at most SMALL_ELEMENTS elements (batch 32, 8 heads, L 512, Q 32), where what the reference
# keeps for the backward is a few tens of MB. Both choices depend on the shape only; the two
# functions are the same arithmetic.

SMALL_ELEMENTS = 2**22  # the largest B·H·L·Q for which the reference runs without recomputation


def cpu_chunk_size(head_dim: int, d_state: int, chunk_size: int) -> int:
    """The chunk the CPU path uses for a head of ``head_dim`` × ``d_state`` (see above)."""
    state = head_dim * d_state
    best = 16 if state <= 1024 else 32 if state <= 4096 else 64
    return max(1, min(int(chunk_size), best))


# ----------------------------------------------------------------------------- memory-lean path

BLOCK_SIZE = 1024  # tokens per recomputed block of the lean path (rounded up to whole chunks)


def ssd_lean(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_state=None,
             dt_softplus=False, dt_limit=NO_LIMIT, return_final_state=False, *,
             block_size: int | None = None):
    """:func:`ssd_ref` run through :func:`lrm.ops.recompute.block_recompute`: the backward pass
    keeps the inputs and one (B, H, P, N) state per block of ``block_size`` tokens (default
    BLOCK_SIZE), and
    recomputes each block's masks and chunk states. Same arguments and results as
    :func:`ssd_ref`; blocks are whole chunks, so the arithmetic is the reference's."""
    _check(x, dt, A, B, C)
    batch, L, H, P = x.shape
    N = B.shape[3]
    Q = max(1, min(int(chunk_size), L))
    block_size = BLOCK_SIZE if block_size is None else block_size  # read now: tests shrink it
    block = Q * max(1, -(-int(block_size) // Q))
    dtype = compute_dtype(x, dt, B, C)
    if initial_state is None:
        h0 = x.new_zeros(batch, H, P, N, dtype=dtype)
    else:
        h0 = upcast(initial_state, dtype)
    seqs = [x, dt, B, C] + ([] if z is None else [z])
    shared = [A] + [t for t in (D, dt_bias) if t is not None]

    def step(x_b, dt_b, B_b, C_b, *rest):
        rest = list(rest)
        z_b = rest.pop(0) if z is not None else None
        A_ = rest.pop(0)
        D_ = rest.pop(0) if D is not None else None
        bias_ = rest.pop(0) if dt_bias is not None else None
        (h,) = rest
        return ssd_ref(x_b, dt_b, A_, B_b, C_b, Q, D=D_, z=z_b, dt_bias=bias_,
                       initial_state=h, dt_softplus=dt_softplus, dt_limit=dt_limit,
                       return_final_state=True)

    out, h = block_recompute(step, seqs, [1] * len(seqs), shared, h0, block=block, out_dim=1)
    return (out, h) if return_final_state else out
