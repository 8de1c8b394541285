"""The selective scan of Mamba-1 (Gu & Dao, 2023): a diagonal, input-dependent linear recurrence.

For every batch b, channel d and state index n:

    h_t[d, n] = exp(Δ_t[d] · A[d, n]) · h_{t-1}[d, n] + Δ_t[d] · u_t[d] · B_t[n]
    y_t[d]    = Σ_n h_t[d, n] · C_t[n]  +  D[d] · u_t[d]
    out_t[d]  = y_t[d] · silu(z_t[d])                                  (when z is given)

with Δ = softplus(delta + delta_bias) when ``delta_softplus`` (else delta + delta_bias).
This is zero-order hold for A and the simplified Euler step Δ·B for B, exactly as mamba-ssm's
kernel and its ``selective_scan_ref`` compute it.

Symbols and shapes (mamba-ssm's argument order and layout, channels before length):
    u, delta, z : (B, D, L)   input, step size, gate          B batch, D channels, L length
    A           : (D, N)      real, negative diagonal state matrix  N state size
    B, C        : (B, N, L) input-dependent, (B, G, N, L) grouped (channel d uses group
                  d // (D / G)), or (D, N) time-invariant
    D, delta_bias : (D,)
    h           : (B, D, N)   the state; ``return_last_state`` returns h_L in the
                  compute dtype (see below)

Three implementations:

- :func:`selective_scan_recurrent_ref`: the loop over t above. The oracle.
- :func:`selective_scan_ref`: a chunked scan. The sequence is cut into chunks of Q tokens; inside
  a chunk all Q states come from a Hillis–Steele parallel prefix scan of the affine maps
  h ↦ a_t·h + b_t (log2 Q vectorised steps, only products of decays ≤ 1, so no overflow where
  exp(-cumsum) tricks would overflow); across chunks a Python loop carries h. Only one chunk's
  (B, D, Q, N) tensors exist at a time, and with autograd each chunk is checkpointed, so the
  backward recomputes it instead of storing (B, L, D, N) — the same trade the CUDA kernel makes.
- :func:`selective_scan`: the dispatch. ``selective_scan_fn`` from mamba-ssm (CUDA, fp32/fp16/
  bf16, real A, N ≤ 256, no initial state) when it imports; else, on small states,
  :func:`selective_scan_small` (section "small shapes" below), and the memory-lean scan of
  :mod:`lrm.ops.selective_scan_lean` beyond.

Compute dtype (:mod:`lrm.dtypes`): promote(input dtypes, float32) — half precision is scanned in
fp32, float64 stays float64 — and the output is cast back to u's dtype.

Simplified vs mamba-ssm: complex A is not supported (Mamba uses the real S4D init); the
reference additionally accepts ``initial_state`` so that a stream can be scanned chunk by chunk.
As in mamba-ssm's kernel, the kernel path gives no gradient through the returned last state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from lrm.dtypes import compute_dtype, upcast
from lrm.ops import _kernels

CHUNK_SIZE = 16  # tokens per chunk: log2(16) = 4 scan steps (the lean path batches chunks)


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus, initial_state, dtype=None):
    """Validate, cast to the compute dtype (default: that of these inputs) and apply
    bias/softplus. Returns the grouped views."""
    if dtype is None:
        dtype = compute_dtype(u, delta, A, B, C, delta_bias, initial_state)
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (B, D, L); got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    if A.is_complex():
        raise NotImplementedError("lrm's selective scan supports real A only (Mamba's S4D-real)")
    batch, dim, _ = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (D, N) = ({dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    delta = upcast(delta, dtype)
    if delta_bias is not None:
        delta = delta + upcast(delta_bias, dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def group_count(M: torch.Tensor, name: str) -> int:
        if M.dim() == 2:
            if M.shape != (dim, n):
                raise ValueError(f"time-invariant {name} must be (D, N), got {tuple(M.shape)}")
            return 1
        if M.dim() == 3 and M.shape[:2] == (batch, n):
            return 1
        if M.dim() == 4 and M.shape[0] == batch and M.shape[2] == n and dim % M.shape[1] == 0:
            return M.shape[1]
        raise ValueError(f"{name} must be (D, N), (B, N, L) or (B, G, N, L) with G dividing D; "
                         f"got {tuple(M.shape)}")

    g_b, g_c = group_count(B, "B"), group_count(C, "C")
    groups = max(g_b, g_c)
    if {g_b, g_c} - {1, groups}:
        raise ValueError(f"B and C have incompatible group counts {g_b} and {g_c}")

    def grouped(M: torch.Tensor) -> torch.Tensor:
        # every form becomes (b|1, G|1, e|1, L|1, N), broadcastable to (B, G, D/G, L, N)
        M = upcast(M, dtype)
        if M.dim() == 2:  # (D, N): one (e, N) block per group, constant over time
            return rearrange(M, "(g e) n -> 1 g e 1 n", g=groups)
        if M.dim() == 3:  # (B, N, L): shared by every channel
            return rearrange(M, "b n l -> b 1 1 l n")
        return rearrange(M, "b g n l -> b g 1 l n")

    u_g = rearrange(upcast(u, dtype), "b (g e) l -> b g e l", g=groups)
    d_g = rearrange(delta, "b (g e) l -> b g e l", g=groups)
    A_g = rearrange(upcast(A, dtype), "(g e) n -> g e n", g=groups)
    h0 = (u.new_zeros(batch, dim, n, dtype=dtype) if initial_state is None
          else upcast(initial_state, dtype))
    if h0.shape != (batch, dim, n):
        raise ValueError(f"initial_state must be (B, D, N) = ({batch}, {dim}, {n}), "
                         f"got {tuple(h0.shape)}")
    h0 = rearrange(h0, "b (g e) n -> b g e n", g=groups)
    return u_g, d_g, A_g, grouped(B), grouped(C), h0


def _finish(y, u, D, z, dtype_in):
    """y (B, D, L) in the compute dtype -> + D·u, gate with silu(z), cast back like mamba-ssm."""
    if D is not None:
        y = y + upcast(u, y.dtype) * upcast(D, y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(upcast(z, y.dtype))
    return y.to(dtype_in)


def _scan_chunk(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk. u, delta: (b, g, e, q); A: (g, e, n); B, C: broadcastable to (b, g, e, q, n);
    h0: (b, g, e, n). Returns y (b, g, e, q) and the state after the chunk (b, g, e, n)."""
    q = u.shape[-1]
    a = torch.exp(delta[..., None] * A[:, :, None, :])  # decay of each step, (b, g, e, q, n)
    b = (delta * u)[..., None] * B  # what each step writes, (b, g, e, q, n)
    # Hillis–Steele inclusive scan of the maps h -> a_t h + b_t: after the step with offset k,
    # (a_t, b_t) composes the 2k maps ending at t; prefixes shorter than 2k are already final.
    k = 1
    while k < q:
        b = torch.cat([b[..., :k, :], b[..., k:, :] + a[..., k:, :] * b[..., :-k, :]], dim=-2)
        a = torch.cat([a[..., :k, :], a[..., k:, :] * a[..., :-k, :]], dim=-2)
        k *= 2
    h = a * h0[..., None, :] + b  # every state of the chunk, (b, g, e, q, n)
    y = (h * C).sum(-1)
    # a copy, not a view: a view of the last state would keep all q states of the chunk alive
    return y, h[..., -1, :].clone()


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, *,
                       chunk_size: int = CHUNK_SIZE):
    """The chunked, vectorised selective scan; same contract as mamba-ssm's ``selective_scan_fn``.

    ``initial_state`` (B, D, N) is the state before the first token (zeros if None).
    Returns out (B, D, L) in u's dtype, and the last state (B, D, N) in the compute dtype
    when ``return_last_state``.
    """
    dtype_in = u.dtype
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_g, d_g, A_g, B_g, C_g, h = _prepare(u, delta, A, B, C, delta_bias, delta_softplus,
                                           initial_state, dtype)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, delta_bias, initial_state))

    # One split per input, not a slice per chunk: autograd then gathers the chunk gradients
    # once (a slice per chunk would build a full-length zero gradient per chunk: O(L²) work).
    def chunks(M: torch.Tensor, dim: int) -> list[torch.Tensor]:
        if M.shape[dim] == 1:  # time-invariant B/C
            return [M] * n_chunks
        return list(M.split(chunk_size, dim=dim))

    n_chunks = -(-u.shape[-1] // chunk_size)
    ys = []
    for u_c, d_c, B_c, C_c in zip(chunks(u_g, -1), chunks(d_g, -1), chunks(B_g, -2),
                                  chunks(C_g, -2), strict=True):
        if needs_grad:  # keep only chunk inputs for backward; recompute the chunk's states
            y, h = checkpoint(_scan_chunk, u_c, d_c, A_g, B_c, C_c, h, use_reentrant=False)
        else:
            y, h = _scan_chunk(u_c, d_c, A_g, B_c, C_c, h)
        ys.append(y)
    y = rearrange(torch.cat(ys, dim=-1), "b g e l -> b (g e) l")
    out = _finish(y, u, D, z, dtype_in)
    if return_last_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out


def selective_scan_recurrent_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                 delta_softplus=False, return_last_state=False,
                                 initial_state=None):
    """The recurrence token by token, in the compute dtype: the oracle for tests. Same contract as
    :func:`selective_scan_ref`."""
    dtype_in = u.dtype
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_g, d_g, A_g, B_g, C_g, h = _prepare(u, delta, A, B, C, delta_bias, delta_softplus,
                                           initial_state, dtype)
    ys = []
    for t in range(u.shape[-1]):
        Bt = B_g[..., 0 if B_g.shape[-2] == 1 else t, :]  # (b|1, g|1, e|1, n)
        Ct = C_g[..., 0 if C_g.shape[-2] == 1 else t, :]
        dt = d_g[..., t, None]  # (b, g, e, 1)
        h = torch.exp(dt * A_g) * h + dt * u_g[..., t, None] * Bt
        ys.append((h * Ct).sum(-1))
    y = rearrange(torch.stack(ys, dim=-1), "b g e l -> b (g e) l")
    out = _finish(y, u, D, z, dtype_in)
    if return_last_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, *, backend: str = "auto",
                   chunk_size: int = CHUNK_SIZE):
    """Dispatching selective scan: mamba-ssm's CUDA ``selective_scan_fn`` where it can serve,
    else the memory-lean :func:`lrm.ops.selective_scan_lean.selective_scan_lean` (with
    ``chunk_size``), which equals :func:`selective_scan_ref`. Same arguments and results."""
    ok = (initial_state is None and not A.is_complex() and A.shape[-1] <= 256
          and u.dtype in (torch.float32, torch.float16, torch.bfloat16))
    if _kernels.use_kernel("selective_scan", backend, "selective_scan_fn", u, delta, A, B, C, D,
                           z, delta_bias, supported=ok,
                           why_unsupported="the kernel takes no initial state, needs real A with "
                                           "N <= 256 and fp32/fp16/bf16 inputs"):
        fn = _kernels.get("selective_scan_fn")
        dt = u.dtype
        # the kernel's dtype rules: delta, z and time-varying B/C in u's dtype; A, D, bias fp32
        f32 = torch.float32
        return fn(u, delta.to(dt), A.to(f32), B.to(f32) if B.dim() == 2 else B.to(dt),
                  C.to(f32) if C.dim() == 2 else C.to(dt), None if D is None else D.to(f32),
                  None if z is None else z.to(dt),
                  None if delta_bias is None else delta_bias.to(f32), delta_softplus,
                  return_last_state)
    if u.shape[0] * u.shape[1] * A.shape[-1] <= SMALL_SLICE_ELEMENTS:  # see "small shapes"
        return selective_scan_small(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    return_last_state, initial_state)
    # the CPU path: the memory-lean scan (a custom autograd function, same results as the ref)
    from lrm.ops.selective_scan_lean import selective_scan_lean  # imports this module

    return selective_scan_lean(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                               return_last_state, initial_state, chunk_size=chunk_size)



# ----------------------------------------------------------------------------- small shapes
#
# The sizes models are trained at on a CPU (batch 32, L ≤ 2048, d_inner ≤ 256, N = 16). There
# the lean scan's cost is not arithmetic but memory: its (B, D, T, N) block tensors (16 MiB)
# leave the caches at every pass, and every fresh tensor of that size is new pages from the
# kernel, faulted in one by one (measured, one thread: writing 32 MiB into a fresh tensor took
# 5x as long as into an existing one, and an elementwise op ran 10x faster per element on
# tensors of 4 MiB than on 32 MiB). The small-shape scan keeps every tensor cache-sized:
#
# - the sequence is cut into blocks of T tokens with T·B·D·N ≈ SMALL_BLOCK_ELEMENTS (4 MiB in
#   fp32), the unit of recomputation: the forward keeps one (B, D, N) state per block, the
#   backward recomputes the block's decays and states from it;
# - inside a block the recurrence is sequential, h_t = a_t ⊙ h_{t-1} + x_t, one in-place
#   ``addcmul`` per token on a (B, D, N) slice of a time-major (T, B, G, E, N) tensor (no
#   log-depth scan: every step does the least work, and the slice is in cache);
# - the backward is written out (the equations are in :mod:`lrm.ops.selective_scan_lean`); its
#   only loop is the reversed recurrence ∂h_t = C_t ∂y_t + a_{t+1} ⊙ ∂h_{t+1}, one ``addcmul``
#   per token, and every gradient is one pass over the block. Autograd sees one node.
#
# Dispatch (:func:`selective_scan` on a CPU, a test of the shape only): this path when a
# (B, D, N) state has at most SMALL_SLICE_ELEMENTS = 2^17 elements (batch 32 × d_inner 256 ×
# N 16), so that a block holds T ≥ 2 tokens and the states kept, L·B·D·N / T, stay within a
# few times u and Δ; beyond that the lean path, whose memory is bounded at any size. The
# crossover is set by memory, not time: measured with ``scripts/bench_small.py scan`` (forward
# and backward of the bare scan, batch 32, N 16, one thread, docs/bench/speed.md "Small
# shapes"), the lean path took 7x (d_inner 64) and 11x (d_inner 256) the time of this one at
# L 128, and was never faster in any shape measured. The block budget, 2^18 elements, was the
# fastest of 2^16 … 2^21 (d_inner 128, L 128, same run).

SMALL_BLOCK_ELEMENTS = 2**18  # elements of one block tensor (T, B, G, E, N): 1 MiB in fp32
SMALL_SLICE_ELEMENTS = 2**17  # the largest (B, D, N) state for which the small path is used


def _rows(M: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Steps s..e-1 of a time-major B or C (L|1, B|1, G|1, E|1, N); time-invariant: whole."""
    return M if M.shape[0] == 1 else M[s:e]


def _sum_n(X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Σ_n X ⊙ M for X (T, B, G, E, N) and a block of B or C: a matrix-vector product when M is
    shared by the channels (no (T, B, G, E, N) temporary), else a product and a sum."""
    if M.shape[-2] == 1:
        return (X @ M.transpose(-1, -2)).squeeze(-1)
    return (X * M).sum(-1)


def _sum_e(X: torch.Tensor, v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Σ_e X ⊙ v, v (T, B, G, E), summed down to the block shape of B or C (its gradient)."""
    if shape[-2] == 1:
        return (X.transpose(-1, -2) @ v[..., None]).transpose(-1, -2).sum_to_size(shape)
    return (X * v[..., None]).sum_to_size(shape)


def _small_block(d: torch.Tensor, du: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decays a_t = exp(Δ_t A) and states h_t of one block, time-major (T, B, G, E, N), from
    Δ and Δ·u (T, B, G, E), A (G, E, N), B (T|1, ..., N) and the entering state h."""
    a = torch.exp(d[..., None] * A)
    hs = du[..., None] * B  # the writes x_t, turned into the states in place
    hs[0].addcmul_(a[0], h)
    for t in range(1, hs.shape[0]):
        hs[t].addcmul_(a[t], hs[t - 1])
    return a, hs


class _SmallSelectiveScan(torch.autograd.Function):
    """(u, Δ, A, B, C, h0) -> (y (B, G, E, L), h_L (B, G, E, N)) on grouped tensors."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, block_size: int):
        L, T = u.shape[-1], block_size
        d_t = delta.permute(3, 0, 1, 2).contiguous()  # (L, B, G, E): a step's slice contiguous
        u_t = u.permute(3, 0, 1, 2).contiguous()
        du_t = d_t * u_t
        B_t, C_t = B.permute(3, 0, 1, 2, 4), C.permute(3, 0, 1, 2, 4)  # (L|1, B|1, G|1, E|1, N)
        y_t = u_t.new_empty(u_t.shape)
        starts = range(0, L, T)
        entering = h0.new_empty((len(starts), *h0.shape))  # all the backward needs of the states
        h = h0
        for c, s in enumerate(starts):
            e = min(s + T, L)
            entering[c] = h
            _, hs = _small_block(d_t[s:e], du_t[s:e], A, _rows(B_t, s, e), h)
            y_t[s:e] = _sum_n(hs, _rows(C_t, s, e))
            h = hs[-1].clone()
        ctx.block_size = T
        ctx.save_for_backward(u_t, d_t, A, B, C, entering)
        return y_t.permute(1, 2, 3, 0), h

    @staticmethod
    def backward(ctx, dy, dh_last):
        u_t, d_t, A, B, C, entering = ctx.saved_tensors
        L, T = u_t.shape[0], ctx.block_size
        B_t, C_t = B.permute(3, 0, 1, 2, 4), C.permute(3, 0, 1, 2, 4)
        dy_t = (torch.zeros_like(u_t) if dy is None
                else dy.permute(3, 0, 1, 2).contiguous())
        du_t = d_t * u_t
        ddelta, du = torch.empty_like(d_t), torch.empty_like(u_t)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B_t), torch.zeros_like(C_t)
        # the gradient reaching the state that leaves the current block
        carry = torch.zeros_like(entering[0]) if dh_last is None else dh_last
        for c, s in reversed(list(enumerate(range(0, L, T)))):
            e = min(s + T, L)
            d, dy_b, B_b, C_b = d_t[s:e], dy_t[s:e], _rows(B_t, s, e), _rows(C_t, s, e)
            a, hs = _small_block(d, du_t[s:e], A, B_b, entering[c])  # recomputed, not kept
            dh = dy_b[..., None] * C_b  # C_t ∂y_t, turned into ∂h_t in place
            dh = dh if dh.shape == hs.shape else dh.expand_as(hs).contiguous()
            dh[-1] += carry
            for t in range(e - s - 2, -1, -1):
                dh[t].addcmul_(a[t + 1], dh[t + 1])
            r = dh * a  # ∂h_t ⊙ a_t ⊙ h_{t-1}: the gradient of log a_t = Δ_t A
            r[0] *= entering[c]
            r[1:] *= hs[:-1]
            w = _sum_n(dh, B_b)  # Σ_n ∂h_t B_t
            ddelta[s:e] = (r * A).sum(-1) + u_t[s:e] * w
            du[s:e] = d * w
            dA += (r * d[..., None]).sum((0, 1))
            dB_b = _sum_e(dh, du_t[s:e], B_b.shape)
            dC_b = _sum_e(hs, dy_b, C_b.shape)
            if B_t.shape[0] == 1:
                dB += dB_b
            else:
                dB[s:e] = dB_b
            if C_t.shape[0] == 1:
                dC += dC_b
            else:
                dC[s:e] = dC_b
            carry = a[0] * dh[0]
        return (du.permute(1, 2, 3, 0), ddelta.permute(1, 2, 3, 0), dA,
                dB.permute(1, 2, 3, 0, 4), dC.permute(1, 2, 3, 0, 4), carry, None)


def small_block_size(u: torch.Tensor, n: int) -> int:
    """Tokens per block of the small-shape scan for u (..., L) and state size n."""
    slice_numel = u.numel() // max(u.shape[-1], 1) * n
    return max(1, min(u.shape[-1], SMALL_BLOCK_ELEMENTS // max(slice_numel, 1)))


def small_scan_core(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, h0: torch.Tensor, block_size: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The small-shape scan on grouped tensors (the layout of :func:`_prepare`), in their dtype.
    Returns y (B, G, E, L) and the last state (B, G, E, N). Exposed for gradcheck."""
    if B.dim() != 5 or C.dim() != 5:
        raise ValueError("B and C must be in the grouped layout (B|1, G|1, E|1, L|1, N)")
    if block_size is None:
        block_size = small_block_size(u, A.shape[-1])
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
    return _SmallSelectiveScan.apply(u, delta, A, B, C, h0, int(block_size))


def selective_scan_small(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False, initial_state=None, *,
                         block_size: int | None = None):
    """The selective scan for small shapes (sequential, cache-sized blocks, written-out
    backward; see the section comment above). Same contract as :func:`selective_scan_ref`."""
    dtype_in = u.dtype
    u_g, d_g, A_g, B_g, C_g, h0 = _prepare(u, delta, A, B, C, delta_bias, delta_softplus,
                                            initial_state)
    y, h = small_scan_core(u_g, d_g, A_g, B_g, C_g, h0, block_size)
    out = _finish(rearrange(y, "b g e l -> b (g e) l"), u, D, z, dtype_in)
    if return_last_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out
