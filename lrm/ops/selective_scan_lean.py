"""The memory-lean selective scan: a custom autograd function with chunk-level recomputation.

Same recurrence as :mod:`lrm.ops.selective_scan` (Mamba-1), for every batch b, channel d and
state index n:

    a_t = exp(Δ_t A)          (decay)          x_t = Δ_t u_t B_t      (write)
    h_t = a_t ⊙ h_{t-1} + x_t                  y_t = Σ_n h_t C_t

What is stored for the backward pass is what mamba-ssm's CUDA kernel stores: the inputs
(u, Δ: (B, D, L); B, C: (B, G, N, L); A: (D, N)) and the state entering every block of T
tokens, (L/T, B, D, N). Nothing of size (B, L, D, N) is ever alive; one block's (B, D, T, N)
tensors are, during the forward and again during the backward, which recomputes the block's
states from the stored state that entered it.

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

Symbols: B batch, G groups of B/C, E = D/G channels per group, L length, Q chunk size,
T block size (a multiple of Q), N state size; tensors are in the grouped layout of
:func:`lrm.ops.selective_scan._prepare`: u, Δ (B, G, E, L); A (G, E, N); B, C broadcastable
to (B, G, E, L, N) (time-invariant B or C has a time axis of 1); h (B, G, E, N).

:func:`selective_scan_lean` has the contract of :func:`lrm.ops.selective_scan.selective_scan_ref`
(which stays, unchanged, as an oracle); tests check outputs, final states and all gradients
against it and against the recurrence, and gradcheck the function in float64. It computes in
the dtype of its (prepared) inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from lrm.ops.selective_scan import CHUNK_SIZE, _finish, _prepare

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
    a = torch.exp(delta[..., None] * A[:, :, None, :])
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
                        return_last_state=False, initial_state=None, *,
                        chunk_size: int = CHUNK_SIZE, block_size: int | None = None):
    """The selective scan with O(B·L·D) saved for the backward pass plus one (B, D, N) state
    per chunk; the contract of :func:`lrm.ops.selective_scan.selective_scan_ref`."""
    dtype_in = u.dtype
    u_g, d_g, A_g, B_g, C_g, h0 = _prepare(u, delta, A, B, C, delta_bias, delta_softplus,
                                            initial_state)
    y, h = lean_scan_core(u_g, d_g, A_g, B_g, C_g, h0, chunk_size, block_size)
    out = _finish(rearrange(y, "b g e l -> b (g e) l"), u, D, z, dtype_in)
    if return_last_state:
        return out, rearrange(h, "b g e n -> b (g e) n")
    return out
