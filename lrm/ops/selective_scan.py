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
    h           : (B, D, N)   the state; ``initial_state`` is h_0 (zeros if None) and
                  ``return_final_state`` returns h_L in the compute dtype (see below)

Four implementations, one contract:

- :func:`selective_scan_recurrent_ref`: the loop over t above. The oracle.
- :func:`selective_scan_ref`: a chunked scan. The sequence is cut into chunks of Q tokens; inside
  a chunk all Q states come from a Hillis–Steele parallel prefix scan of the affine maps
  h ↦ a_t·h + b_t (log2 Q vectorised steps, only products of decays ≤ 1, so no overflow where
  exp(-cumsum) tricks would overflow); across chunks a Python loop carries h. Only one chunk's
  (B, D, Q, N) tensors exist at a time, and with autograd each chunk is checkpointed, so the
  backward recomputes it instead of storing (B, L, D, N) — the same trade the CUDA kernel makes.
- :func:`selective_scan_lean`: the same scan as one custom autograd function with the backward
  written out (below); it is what runs without a kernel.
- :func:`selective_scan`: the dispatch. ``selective_scan_fn`` from mamba-ssm (CUDA, fp32/fp16/
  bf16, real A, N ≤ 256, no initial state) when it imports; else, for (B, D, N) states of up
  to 2^22 elements, :func:`selective_scan_small` (section "small shapes" below), and the
  memory-lean :func:`selective_scan_lean` beyond.

Compute dtype (:mod:`lrm.dtypes`): promote(input dtypes, float32) — half precision is scanned in
fp32, float64 stays float64 — and the output is cast back to u's dtype.

Simplified vs mamba-ssm: complex A is not supported (Mamba uses the real S4D init); the
references additionally accept ``initial_state`` so that a stream can be scanned chunk by chunk.
As in mamba-ssm's kernel, the kernel path gives no gradient through the returned final state.

The memory-lean path. Write the recurrence as

    a_t = exp(Δ_t A)          (decay)          x_t = Δ_t u_t B_t      (write)
    h_t = a_t ⊙ h_{t-1} + x_t                  y_t = Σ_n h_t C_t

What :func:`selective_scan_lean` stores for the backward pass is what mamba-ssm's CUDA kernel
stores: the inputs (u, Δ: (B, D, L); B, C: (B, G, N, L); A: (D, N)) and the state entering every
block of T tokens, (L/T, B, D, N). Nothing of size (B, L, D, N) is ever alive; one block's
(B, D, T, N) tensors are, during the forward and again during the backward, which recomputes the
block's states from the stored state that entered it.

The backward pass is written out, not left to autograd (which would record one graph node per
scan step and per slice). With ∂h_t the total gradient reaching h_t (from y_t and from h_{t+1}):

    ∂h_t   = C_t ∂y_t + a_{t+1} ⊙ ∂h_{t+1}          (a reversed scan of the same kind)
    ∂x_t   = ∂h_t                                   so ∂u_t = Δ_t Σ_n ∂h_t B_t,
    ∂B_t   = Σ_d ∂h_t Δ_t u_t,   ∂C_t = Σ_d h_t ∂y_t
    r_t    = ∂h_t ⊙ h_{t-1} ⊙ a_t                   (the gradient of log a_t = Δ_t A)
    ∂Δ_t   = Σ_n r_t A + u_t Σ_n ∂h_t B_t,          ∂A = Σ_{b,t} r_t Δ_t
    ∂h_0   = a_1 ⊙ ∂h_1

Inside a block both scans run on two levels: Hillis–Steele prefix scans of the affine maps
h ↦ a h + x inside every chunk of Q tokens at once (log2 Q vectorised steps over ping-pong
buffers), then the same scan over the block's T/Q chunk-to-chunk maps, then one pass adding each
chunk's entering state. Only products of decays ≤ 1 appear, so nothing overflows; a Python loop
runs over the L/T blocks only.

Symbols of the lean path: B batch, G groups of B/C, E = D/G channels per group, L length,
Q chunk size, T block size (a multiple of Q), N state size; tensors are in the grouped layout of
:func:`_prepare`: u, Δ (B, G, E, L); A (G, E, N); B, C broadcastable to (B, G, E, L, N)
(time-invariant B or C has a time axis of 1); h (B, G, E, N). Tests check its outputs, final
states and all gradients against :func:`selective_scan_ref` and the recurrence, and gradcheck it
in float64. It computes in the dtype of its (prepared) inputs.
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
                       return_final_state=False, initial_state=None, *,
                       chunk_size: int = CHUNK_SIZE):
    """The chunked, vectorised selective scan; same contract as mamba-ssm's ``selective_scan_fn``.

    ``initial_state`` (B, D, N) is the state before the first token (zeros if None).
    Returns out (B, D, L) in u's dtype, and the last state (B, D, N) in the compute dtype
    when ``return_final_state``.
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
    if return_final_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out


def selective_scan_recurrent_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                 delta_softplus=False, return_final_state=False,
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
    if return_final_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_final_state=False, initial_state=None, *, backend: str = "auto",
                   chunk_size: int = CHUNK_SIZE):
    """Dispatching selective scan: mamba-ssm's CUDA ``selective_scan_fn`` where it can serve,
    else the memory-lean :func:`selective_scan_lean` (with ``chunk_size``), which equals
    :func:`selective_scan_ref`. Same arguments and results."""
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
                  return_last_state=return_final_state)  # mamba-ssm's name
    if u.shape[0] * u.shape[1] * A.shape[-1] <= SMALL_SLICE_ELEMENTS:  # see "small shapes"
        return selective_scan_small(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    return_final_state, initial_state)
    # the CPU path: the memory-lean scan (a custom autograd function, same results as the ref)
    return selective_scan_lean(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                               return_final_state, initial_state, chunk_size=chunk_size)


# ----------------------------------------------------------------------------- memory-lean path

# Tokens per block (the unit of recomputation, and the size of every op): by default as many
# as make a block's (B, D, T, N) tensors 2^22 elements (16 MiB in fp32), at least 256. Fewer,
# larger ops matter with several threads on a busy machine, where every parallel region waits
# for its slowest thread (measured: d_inner 128, 2 threads, 512-token blocks 2.4x slower than
# 2048-token blocks).
BLOCK_ELEMENTS = 2**22


def _affine_scan_(a: torch.Tensor, x: torch.Tensor, reverse: bool = False,
                  products: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """All prefixes of the maps h ↦ a_t h + x_t along dim -2, starting from h = 0.

    Forward: s_t = a_t s_{t-1} + x_t. Reverse: s_t = a_t s_{t+1} + x_t. Neither input is
    modified (every step writes fresh buffers: an in-place update would read elements it has
    already overwritten). After the step with offset k, (a_t, s_t) compose the 2k maps ending
    (starting, when reversed) at t. With ``products`` also returns the running products of a
    (Π_{j≤t} a_j, or Π_{j≥t} a_j when reversed).
    """
    q = a.shape[-2]
    k = 1
    while k < q:
        s_new = torch.empty_like(x)
        if reverse:
            s_new[..., q - k:, :] = x[..., q - k:, :]
            torch.addcmul(x[..., :q - k, :], a[..., :q - k, :], x[..., k:, :],
                          out=s_new[..., :q - k, :])
        else:
            s_new[..., :k, :] = x[..., :k, :]
            torch.addcmul(x[..., k:, :], a[..., k:, :], x[..., :q - k, :], out=s_new[..., k:, :])
        x = s_new
        if products or 2 * k < q:  # the decay products are only needed by a later step
            a_new = torch.empty_like(a)
            if reverse:
                a_new[..., q - k:, :] = a[..., q - k:, :]
                torch.mul(a[..., :q - k, :], a[..., k:, :], out=a_new[..., :q - k, :])
            else:
                a_new[..., :k, :] = a[..., :k, :]
                torch.mul(a[..., k:, :], a[..., :q - k, :], out=a_new[..., k:, :])
            a = a_new
        k *= 2
    return (x, a) if products else x


def _two_level_scan(a: torch.Tensor, x: torch.Tensor, h: torch.Tensor, Q: int,
                    reverse: bool = False) -> torch.Tensor:
    """All states s_t = a_t s_{t∓1} + x_t of a block of T = K·Q steps (dim -2), entered with h
    (before the first step, or after the last one when reversed).

    Level 1 scans inside each of the K chunks from zero, all chunks at once; level 2 scans the
    K chunk-to-chunk maps (tensors Q times smaller); a last pass adds each chunk's entering
    state, decayed: s = S + P ⊙ h_enter. Every op is block-sized, none is per chunk.
    """
    a_c, x_c = (rearrange(t, "... (k q) n -> ... k q n", q=Q) for t in (a, x))
    S, P = _affine_scan_(a_c, x_c, reverse=reverse, products=True)  # (..., K, Q, N)
    end = 0 if reverse else -1  # where a chunk's map is complete
    P_end, S_end = P[..., end, :], S[..., end, :].clone()  # chunk maps, (..., K, N)
    first = -1 if reverse else 0
    S_end[..., first, :] += P_end[..., first, :] * h  # the block's entering state
    exits = _affine_scan_(P_end, S_end, reverse=reverse)  # state leaving each chunk
    if reverse:
        enter = torch.cat([exits[..., 1:, :], h[..., None, :]], dim=-2)
    else:
        enter = torch.cat([h[..., None, :], exits[..., :-1, :]], dim=-2)
    s = torch.addcmul(S, P, enter[..., None, :])
    return rearrange(s, "... k q n -> ... (k q) n")


def _time(M: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Tokens s..e-1 of B or C (B, G|1, 1|E, L|1, N); a time-invariant one is returned whole."""
    return M if M.shape[-2] == 1 else M[..., s:e, :]


def _block(u, delta, B, C, s: int, e: int, T: int):
    """Tokens s..e-1 of the inputs, zero-padded to T steps. A padded step has Δ = 0: a = 1 and
    nothing written, so the state passes through it unchanged (and u, B, C there are 0)."""
    pad = T - (e - s)

    def cut(M, time_dim):
        if time_dim == -2 and M.shape[-2] == 1:  # time-invariant B or C
            return M
        M = M.narrow(time_dim, s, e - s)
        if pad:
            M = F.pad(M, (0, 0, 0, pad) if time_dim == -2 else (0, pad))
        return M

    return cut(u, -1), cut(delta, -1), cut(B, -2), cut(C, -2)


def _block_states(u, delta, A, B, h_in, Q: int):
    """Decays a (B, G, E, T, N) and all states h_1..h_T of a block entered with h_in."""
    a = torch.exp2(delta[..., None] * (A * LOG2E)[:, :, None, :])  # exp(Δ A); exp2 is faster
    x = (delta * u)[..., None] * B  # (B, G, E, T, N)
    return a, _two_level_scan(a, x, h_in, Q)


class _LeanSelectiveScan(torch.autograd.Function):
    """(u, Δ, A, B, C, h0) -> (y (B, G, E, L), h_L (B, G, E, N)); see the module docstring."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_size: int, block_size: int | None):
        L = u.shape[-1]
        Q = chunk_size
        if block_size is None:
            block_size = max(256, BLOCK_ELEMENTS // (u.shape[0] * u.shape[1] * u.shape[2]
                                                     * A.shape[-1]))
        # whole chunks per block, and no more chunks than the sequence needs
        T = Q * max(1, min(-(-block_size // Q), -(-L // Q)))
        y = u.new_empty(u.shape)
        entering = []  # the state before each block: all the backward pass needs besides inputs
        h = h0
        for s in range(0, L, T):
            e = min(s + T, L)
            entering.append(h)
            u_b, d_b, B_b, C_b = _block(u, delta, B, C, s, e, T)
            _, hs = _block_states(u_b, d_b, A, B_b, h, Q)
            y[..., s:e] = (hs * C_b).sum(-1)[..., :e - s]
            h = hs[..., -1, :].clone()  # a copy: a view would keep the block's states alive
        ctx.sizes = (Q, T)
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(entering))
        return y, h

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, entering = ctx.saved_tensors
        Q, T = ctx.sizes
        L = u.shape[-1]
        du, ddelta = torch.zeros_like(u), torch.zeros_like(delta)
        dA = torch.zeros_like(A)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        # the gradient reaching the state that leaves the current block
        carry = torch.zeros_like(entering[0]) if dh_last is None else dh_last
        if dy is None:
            dy = torch.zeros_like(u)
        starts = list(range(0, L, T))
        for c in reversed(range(len(starts))):
            s = starts[c]
            e = min(s + T, L)
            n = e - s
            u_b, d_b, B_b, C_b = _block(u, delta, B, C, s, e, T)
            dy_b = F.pad(dy[..., s:e], (0, T - n))
            h_in = entering[c]
            a, hs = _block_states(u_b, d_b, A, B_b, h_in, Q)  # recomputed, not stored
            # ∂h_t = C_t ∂y_t + a_{t+1} ∂h_{t+1}: a reversed scan whose decay at t is a_{t+1},
            # entered (from the end) with the gradient reaching the block's last state
            g = dy_b[..., None] * C_b
            a_next = torch.cat([a[..., 1:, :], torch.ones_like(a[..., :1, :])], dim=-2)
            dh = _two_level_scan(a_next, g, carry, Q, reverse=True)  # (B, G, E, T, N)
            h_prev = torch.cat([h_in[..., None, :], hs[..., :-1, :]], dim=-2)
            r = dh * h_prev * a  # gradient of log a_t = Δ_t A
            w = (dh * B_b).sum(-1)  # Σ_n ∂h_t B_t, (B, G, E, T)
            ddelta[..., s:e] = (torch.einsum("bgetn,gen->bget", r, A) + u_b * w)[..., :n]
            du[..., s:e] = (d_b * w)[..., :n]
            dA += torch.einsum("bgetn,bget->gen", r, d_b)
            dB_b = (dh * (d_b * u_b)[..., None]).sum_to_size(B_b.shape)
            dC_b = (hs * dy_b[..., None]).sum_to_size(C_b.shape)
            if B.shape[-2] == 1:
                dB += dB_b
            else:
                dB[..., s:e, :] = dB_b[..., :n, :]
            if C.shape[-2] == 1:
                dC += dC_b
            else:
                dC[..., s:e, :] = dC_b[..., :n, :]
            carry = a[..., 0, :] * dh[..., 0, :]
        return du, ddelta, dA, dB, dC, carry, None, None


def lean_scan_core(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, h0: torch.Tensor, chunk_size: int = CHUNK_SIZE,
                   block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan on grouped tensors (see the module docstring), in their dtype. Returns
    y (B, G, E, L) and the last state (B, G, E, N). Exposed for gradcheck."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    # B and C must have the full rank-5 layout: (B|1, G|1, E|1, L|1, N)
    if B.dim() != 5 or C.dim() != 5:
        raise ValueError("B and C must be in the grouped layout (B|1, G|1, E|1, L|1, N)")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
    return _LeanSelectiveScan.apply(u, delta, A, B, C, h0, int(chunk_size), block_size)


def selective_scan_lean(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_final_state=False, initial_state=None, *,
                        chunk_size: int = CHUNK_SIZE, block_size: int | None = None):
    """The selective scan with O(B·L·D) saved for the backward pass plus one (B, D, N) state
    per chunk; the contract of :func:`selective_scan_ref`."""
    dtype_in = u.dtype
    u_g, d_g, A_g, B_g, C_g, h0 = _prepare(u, delta, A, B, C, delta_bias, delta_softplus,
                                            initial_state)
    y, h = lean_scan_core(u_g, d_g, A_g, B_g, C_g, h0, chunk_size, block_size)
    out = _finish(rearrange(y, "b g e l -> b (g e) l"), u, D, z, dtype_in)
    if return_final_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out


# ----------------------------------------------------------------------------- small shapes
#
# The sizes models are trained at on a CPU (batch 32, L ≤ 2048, d_inner ≤ 256, N = 16). There
# the lean scan's cost is not arithmetic but memory: its (B, D, T, N) block tensors (16 MiB)
# leave the caches at every pass, and every fresh tensor of that size is new pages from the
# kernel, faulted in one by one (measured, one thread: writing 32 MiB into a fresh tensor took
# 5x as long as into an existing one, and an elementwise op ran 10x faster per element on
# tensors of 4 MiB than on 32 MiB). The small-shape scan keeps every tensor cache-sized:
#
# - the sequence is cut into blocks of T tokens with T·B·D·N ≈ SMALL_BLOCK_ELEMENTS (1 MiB in
#   fp32, at least one token), the unit of recomputation: the backward recomputes a block's
#   decays and states from the state that entered it;
# - the forward keeps the state entering every M-th block (a group of M blocks), M the fewest
#   that keep at most SMALL_KEPT_PER_TOKEN = 8 state elements per token and channel
#   (N / (T·M) ≤ 8, :func:`small_group`), so what is kept is at most 8 times u whatever N and
#   the batch are. Where M > 1 the backward first recomputes the entering states of a group
#   from the one kept (one more forward pass over the group's blocks but the last); at the
#   default N = 16, with T ≥ 2, M is 1 and there is no extra pass;
# - inside a block the recurrence is sequential, h_t = a_t ⊙ h_{t-1} + x_t, one in-place
#   ``addcmul`` per token on a (B, D, N) slice of a time-major (T, B, G, E, N) tensor (no
#   log-depth scan: every step does the least work, and the slice is in cache);
# - the backward is written out (the equations are in the memory-lean section above); its
#   only loop is the reversed recurrence ∂h_t = C_t ∂y_t + a_{t+1} ⊙ ∂h_{t+1}, one ``addcmul``
#   per token, and every gradient is one pass over the block. Autograd sees one node.
#
# Dispatch (:func:`selective_scan` without a kernel, a test of the shape only): this path when a
# (B, D, N) state has at most SMALL_SLICE_ELEMENTS = 2^22 elements (16 MiB in fp32; batch 32 ×
# d_inner 2048 × N 64), else the lean path. The crossover is set by measurement: forward and
# backward of the bare scan, batch 32, one thread (docs/bench/speed.md "Small shapes"), the
# lean path took 7x (d_inner 64, N 16) and 11x (d_inner 256, N 16) the time of this one at
# L 128, 11x to 14x for states of 2^17 to 2^20 elements (N 32 and 64, L 32 to 128), and 7x
# to 9x at 2^21 and 2^22 (N 64, L 16); it was never faster in any shape measured.
# Beyond 2^22 nothing was measured, so the lean path, whose memory is bounded at any size,
# keeps those. The block budget, 2^18 elements, was the fastest of 2^16 … 2^21 (d_inner 128,
# L 128, N 16).

SMALL_BLOCK_ELEMENTS = 2**18  # elements of one block tensor (T, B, G, E, N): 1 MiB in fp32
SMALL_SLICE_ELEMENTS = 2**22  # the largest (B, D, N) state for which the small path is used
SMALL_KEPT_PER_TOKEN = 8  # state elements kept per token and channel: at most 8 times u
LOG2E = 1.4426950408889634  # log2(e): exp(x) = 2^(x·log2 e)


def _rows(M: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Steps s..e-1 of a time-major B or C (L|1, B|1, G|1, E|1, N); time-invariant: whole."""
    return M if M.shape[0] == 1 else M[s:e]


def _sum_n(X: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Σ_n X ⊙ M for X (T, B, G, E, N) and a block of B or C (T|1, B|1, G|1, E|1, N).

    A product and a sum, even where M is shared by the channels: as a batched matrix-vector
    product it is T·B products of (E, N) by (N, 1), which measured 2x slower (one thread,
    (4, 32, 1, 128, 16) blocks: 226 against 114 µs, an ad hoc timing)."""
    return (X * M).sum(-1)


def _sum_e(X: torch.Tensor, v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Σ_e X ⊙ v, v (T, B, G, E), summed down to the block shape of B or C (its gradient).
    Where B or C is shared by the channels an einsum reduces over E directly (measured 6x
    faster than the batched matrix-vector product, 2x than a product and a sum)."""
    if shape[-2] == 1:
        return torch.einsum("tbgen,tbge->tbgn", X, v).unsqueeze(-2).sum_to_size(shape)
    return (X * v[..., None]).sum_to_size(shape)


def _small_block(d: torch.Tensor, du: torch.Tensor, A2: torch.Tensor, B: torch.Tensor,
                 h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decays a_t = exp(Δ_t A) and states h_t of one block, time-major (T, B, G, E, N), from
    Δ and Δ·u (T, B, G, E), A2 = A·log2(e) (G, E, N), B (T|1, ..., N) and the entering state h.
    The decay is taken as 2^(Δ A2): torch 2.13's CPU ``exp2`` measured 3x faster than its ``exp``
    (AMD EPYC, one thread, 2^18 float32 elements: 86 against 246 µs, an ad hoc timing), and the
    factor log2(e) is folded into A once per call, not into every element."""
    a = torch.exp2(d[..., None] * A2)  # = exp(Δ_t A), see the docstring
    hs = du[..., None] * B  # the writes x_t, turned into the states in place
    hs[0].addcmul_(a[0], h)
    for t in range(1, hs.shape[0]):
        hs[t].addcmul_(a[t], hs[t - 1])
    return a, hs


class _SmallSelectiveScan(torch.autograd.Function):
    """(u, Δ, A, B, C, h0) -> (y (B, G, E, L), h_L (B, G, E, N)) on grouped tensors."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, block_size: int, group: int):
        L, T, M = u.shape[-1], block_size, group
        d_t = delta.permute(3, 0, 1, 2).contiguous()  # (L, B, G, E): a step's slice contiguous
        u_t = u.permute(3, 0, 1, 2).contiguous()
        du_t = d_t * u_t
        B_t, C_t = B.permute(3, 0, 1, 2, 4), C.permute(3, 0, 1, 2, 4)  # (L|1, B|1, G|1, E|1, N)
        y_t = u_t.new_empty(u_t.shape)
        starts = range(0, L, T)
        # all the backward needs of the states: the state entering every M-th block
        kept = h0.new_empty((-(-len(starts) // M), *h0.shape))
        A2 = A * LOG2E
        h = h0
        for c, s in enumerate(starts):
            e = min(s + T, L)
            if c % M == 0:
                kept[c // M] = h
            _, hs = _small_block(d_t[s:e], du_t[s:e], A2, _rows(B_t, s, e), h)
            y_t[s:e] = _sum_n(hs, _rows(C_t, s, e))
            h = hs[-1].clone()
        ctx.block_size, ctx.group = T, M
        ctx.save_for_backward(u_t, d_t, A, B, C, kept)
        return y_t.permute(1, 2, 3, 0), h

    @staticmethod
    def backward(ctx, dy, dh_last):
        u_t, d_t, A, B, C, kept = ctx.saved_tensors
        L, T, M = u_t.shape[0], ctx.block_size, ctx.group
        B_t, C_t = B.permute(3, 0, 1, 2, 4), C.permute(3, 0, 1, 2, 4)
        dy_t = (torch.zeros_like(u_t) if dy is None
                else dy.permute(3, 0, 1, 2).contiguous())
        du_t = d_t * u_t
        ddelta, du = torch.empty_like(d_t), torch.empty_like(u_t)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B_t), torch.zeros_like(C_t)
        # the gradient reaching the state that leaves the current block
        carry = torch.zeros_like(kept[0]) if dh_last is None else dh_last
        A2 = A * LOG2E
        starts = range(0, L, T)
        for c, s in reversed(list(enumerate(starts))):
            e = min(s + T, L)
            if c % M == M - 1 or c == len(starts) - 1:  # a group's last block: the states
                entering = [kept[c // M]]  # entering its blocks, recomputed from the one kept
                for s_j in starts[c - c % M:c]:
                    e_j = min(s_j + T, L)
                    entering.append(_small_block(d_t[s_j:e_j], du_t[s_j:e_j], A2,
                                                 _rows(B_t, s_j, e_j), entering[-1])[1][-1].clone())
            h_in = entering[c % M]
            d, dy_b, B_b, C_b = d_t[s:e], dy_t[s:e], _rows(B_t, s, e), _rows(C_t, s, e)
            a, hs = _small_block(d, du_t[s:e], A2, B_b, h_in)  # recomputed, not kept
            dh = dy_b[..., None] * C_b  # C_t ∂y_t, turned into ∂h_t in place
            dh = dh if dh.shape == hs.shape else dh.expand_as(hs).contiguous()
            dh[-1] += carry
            for t in range(e - s - 2, -1, -1):
                dh[t].addcmul_(a[t + 1], dh[t + 1])
            r = dh * a  # ∂h_t ⊙ a_t ⊙ h_{t-1}: the gradient of log a_t = Δ_t A
            r[0] *= h_in
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
                dB.permute(1, 2, 3, 0, 4), dC.permute(1, 2, 3, 0, 4), carry, None, None)


def small_block_size(u: torch.Tensor, n: int) -> int:
    """Tokens per block of the small-shape scan for u (..., L) and state size n."""
    slice_numel = u.numel() // max(u.shape[-1], 1) * n
    return max(1, min(u.shape[-1], SMALL_BLOCK_ELEMENTS // max(slice_numel, 1)))


def small_group(n: int, block_size: int) -> int:
    """Blocks per kept state: the fewest that keep at most SMALL_KEPT_PER_TOKEN state elements
    per token and channel, n / (block_size · group) ≤ SMALL_KEPT_PER_TOKEN."""
    return max(1, -(-n // (block_size * SMALL_KEPT_PER_TOKEN)))


def small_scan_core(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, h0: torch.Tensor, block_size: int | None = None,
                    group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The small-shape scan on grouped tensors (the layout of :func:`_prepare`), in their dtype.
    ``block_size``: tokens per block (default :func:`small_block_size`); ``group``: blocks per
    kept state (default :func:`small_group`). Returns y (B, G, E, L) and the last state
    (B, G, E, N). Exposed for gradcheck."""
    if B.dim() != 5 or C.dim() != 5:
        raise ValueError("B and C must be in the grouped layout (B|1, G|1, E|1, L|1, N)")
    if block_size is None:
        block_size = small_block_size(u, A.shape[-1])
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of tokens, got {block_size}")
    if group is None:
        group = small_group(A.shape[-1], block_size)
    if group < 1:
        raise ValueError(f"group must be a positive number of blocks, got {group}")
    return _SmallSelectiveScan.apply(u, delta, A, B, C, h0, int(block_size), int(group))


def selective_scan_small(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_final_state=False, initial_state=None, *,
                         block_size: int | None = None, group: int | None = None):
    """The selective scan for small shapes (sequential, cache-sized blocks, written-out
    backward; see the section comment above). Same contract as :func:`selective_scan_ref`."""
    dtype_in = u.dtype
    u_g, d_g, A_g, B_g, C_g, h0 = _prepare(u, delta, A, B, C, delta_bias, delta_softplus,
                                            initial_state)
    y, h = small_scan_core(u_g, d_g, A_g, B_g, C_g, h0, block_size, group)
    out = _finish(rearrange(y, "b g e l -> b (g e) l"), u, D, z, dtype_in)
    if return_final_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out
