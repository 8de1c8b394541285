"""Forgetting attention (Lin, Nikishin, He, Courville, ICLR 2025): softmax attention whose logits
carry a data-dependent decay bias.

    f_t = σ(w_fᵀ x_t + b_f) ∈ (0, 1)               one forget gate per token and head
    c_t = Σ_{l ≤ t} log f_l                         cumulative log forget gate
    D_ij = c_i − c_j = Σ_{l=j+1..i} log f_l  ≤ 0    (j ≤ i; −∞ above the diagonal)
    o_i = Σ_{j ≤ i} softmax_j(q_i·k_j·scale + D_ij) v_j

Equivalently, the weight of key j at query i is exp(q_i·k_j·scale) · Π_{l=j+1..i} f_l,
renormalised: every later forget gate multiplies the old unnormalised scores, exactly like the
forget gate of an RNN multiplies its state. With f ≡ 1 (log f ≡ 0) this is causal softmax
attention.

Symbols: B batch, Tq queries, Tk keys (Tq ≤ Tk), H heads, D head width, scale = 1/√D by default.
Layout as in flash-linear-attention: q (B, Tq, H, D), k and v (B, Tk, H, D), log_fgate (B, Tk, H).

Streaming: when Tq < Tk, the queries are the *last* Tq positions (query i sits at absolute
position Tk − Tq + i and sees keys 0..Tk − Tq + i): a KV cache of Tk − Tq tokens followed by the
new chunk. ``log_fgate`` covers all Tk keys, so the cache stores log f per token, not c: c grows
without bound over a long stream, and a difference of two large fp32 numbers loses the small
decays that matter most. Here c is re-summed in fp64 at each call and rebased per query block
before it is cast to the compute dtype, so D_ij of nearby tokens is exact to fp32 at any length.

Three implementations:

- ``forgetting_attn_quadratic_ref``: the paper's equation, with the full (Tq, Tk) bias matrix.
- ``forgetting_attn_recurrent_ref``: token by token over a growing KV cache whose bias decays
  by log f_t at every step (the decode loop). The oracle for tests, with the quadratic one.
- ``forgetting_attn_ref``: FlashAttention's algorithm in PyTorch, the CPU path. Tiles of
  ``block_q`` queries × ``block_k`` keys, an online softmax over the key tiles, and a custom
  backward that recomputes the tiles from the saved log-sum-exp, so forward *and* backward hold
  O(T·D + block_q·block_k) memory, never (Tq, Tk). The decay bias is added per tile: it is a
  difference of a query term and a key term, so a tile needs only c of its rows and columns.

Kernel: ``fla.ops.forgetting_attn.parallel_forgetting_attn`` (flash-linear-attention, Triton)
serves CUDA tensors when Tq == Tk (no cache) and D ≤ 256; streaming with a cache uses the ref.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from lrm.dtypes import compute_dtype, upcast
from lrm.ops import _kernels
from lrm.ops.attention import causal_mask

BLOCK_Q = 128
BLOCK_K = 512


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_fgate: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or log_fgate.dim() != 3:
        raise ValueError("forgetting attention expects q (B, Tq, H, D), k/v (B, Tk, H, D) and "
                         f"log_fgate (B, Tk, H); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}, {tuple(log_fgate.shape)}")
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    if (k.shape != (B, Tk, H, D) or v.shape[:3] != (B, Tk, H)
            or log_fgate.shape != (B, Tk, H)):
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, log_fgate {tuple(log_fgate.shape)}")
    if Tq > Tk or Tk == 0:
        raise ValueError(f"need 1 <= Tq <= Tk (queries are the last Tq keys); got Tq={Tq}, "
                         f"Tk={Tk}")


def _cumsum64(log_fgate: torch.Tensor) -> torch.Tensor:
    """c = cumsum(log f) over time, in fp64: (B, Tk, H) -> (B, H, Tk)."""
    dtype = torch.float32 if log_fgate.device.type == "mps" else torch.float64  # no fp64 on MPS
    return rearrange(log_fgate.to(dtype).cumsum(1), "b t h -> b h t")


# ----------------------------------------------------------------------------- oracles


def forgetting_attn_quadratic_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  log_fgate: torch.Tensor, *,
                                  scale: float | None = None) -> torch.Tensor:
    """The paper's equation with the full (Tq, Tk) decay matrix D, in the compute dtype;
    for tests."""
    _check(q, k, v, log_fgate)
    Tq, Tk, D = q.shape[1], k.shape[1], q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, log_fgate)
    c = _cumsum64(log_fgate)  # (B, H, Tk)
    decay = upcast(c[..., Tk - Tq:, None] - c[..., None, :], dtype)  # D_ij, (B, H, Tq, Tk)
    s = torch.einsum("bqhd,bkhd->bhqk", upcast(q, dtype), upcast(k, dtype)) * scale + decay
    visible = causal_mask(Tq, Tk, device=q.device)
    p = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, upcast(v, dtype)).to(q.dtype)


def forgetting_attn_recurrent_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  log_fgate: torch.Tensor, *,
                                  scale: float | None = None) -> torch.Tensor:
    """The decode loop: a KV cache whose per-key bias a_j = D_tj is updated token by token,

        a ← a + log f_t  (every cached key decays),  append a_t = 0 for the new key,
        o_t = softmax(q_t·K·scale + a) V.

    In the compute dtype (fp64 for the bias); slow; the oracle for tests.
    """
    _check(q, k, v, log_fgate)
    Tq, Tk, D = q.shape[1], k.shape[1], q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, log_fgate)
    qf, kf, vf = (upcast(t, dtype) for t in (q, k, v))
    g = upcast(log_fgate, torch.float64)  # the bias sums many small terms: always fp64
    a = g.new_zeros(g.shape[0], 0, g.shape[2])  # (B, t, H): the bias of each cached key
    outs = []
    for t in range(Tk):
        a = torch.cat([a + g[:, t:t + 1], torch.zeros_like(g[:, :1])], dim=1)
        i = t - (Tk - Tq)  # index of the query at position t, if any
        if i < 0:
            continue
        s = torch.einsum("bhd,bjhd->bhj", qf[:, i], kf[:, :t + 1]) * scale
        p = torch.softmax(s + upcast(rearrange(a, "b j h -> b h j"), dtype), dim=-1)
        outs.append(torch.einsum("bhj,bjhd->bhd", p, vf[:, :t + 1]))
    return torch.stack(outs, dim=1).to(q.dtype)


# ----------------------------------------------------------------------------- blockwise


def _tile_logits(qb: torch.Tensor, kb: torch.Tensor, cq: torch.Tensor, ck: torch.Tensor,
                 q0: int, k0: int) -> torch.Tensor:
    """Logits of one tile: qb (B, H, bq, D) already scaled, kb (B, H, bk, D), cq (B, H, bq) and
    ck (B, H, bk) the rebased c of its rows and columns; q0/k0 the absolute positions of the
    first row/column. Keys after a query are -inf (only tiles that cross the diagonal)."""
    s = (qb @ kb.transpose(-1, -2)).add_(cq[..., :, None]).sub_(ck[..., None, :])
    bq, bk = s.shape[-2:]
    if k0 + bk - 1 > q0:  # some key of this tile lies after the first query
        s.masked_fill_(~causal_mask(bq, bk, q0=q0, k0=k0, device=s.device), float("-inf"))
    return s


def _rebased(c: torch.Tensor, q0: int, q1: int, dtype: torch.dtype = torch.float32
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """c of the rows q0..q1-1 and of the keys 0..q1-1, minus c at the last row, in ``dtype``
    (the compute dtype of q, k, v).

    c is non-increasing, so both are >= 0, and the decays near the diagonal (the ones that
    matter) are small numbers, exact in fp32 however long the sequence."""
    ref = c[..., q1 - 1:q1]
    return upcast(c[..., q0:q1] - ref, dtype), upcast(c[..., :q1] - ref, dtype)


class _BlockwiseForgettingAttn(torch.autograd.Function):
    """q (B, H, Tq, D) scaled, k (B, H, Tk, D), v (B, H, Tk, Dv), all in the compute dtype
    (fp32 or fp64); c (B, H, Tk) fp64. Queries are the last Tq positions. Returns o
    (B, H, Tq, Dv) in the compute dtype."""

    @staticmethod
    def forward(ctx, q, k, v, c, block_q: int, block_k: int):  # type: ignore[override]
        B, H, Tq, _ = q.shape
        Tk, Dv = k.shape[2], v.shape[-1]
        off = Tk - Tq
        o = q.new_empty(B, H, Tq, Dv)
        lse = q.new_empty(B, H, Tq)
        for qs in range(0, Tq, block_q):
            qe = min(qs + block_q, Tq)
            p0, p1 = off + qs, off + qe  # absolute positions of the rows; keys 0..p1-1
            cq, ck = _rebased(c, p0, p1, q.dtype)
            qb = q[:, :, qs:qe]
            m = q.new_full((B, H, qe - qs), float("-inf"))  # running row max
            l = q.new_zeros(B, H, qe - qs)  # running row sum of exp(s - m)
            acc = q.new_zeros(B, H, qe - qs, Dv)  # running Σ exp(s - m) v
            for ks in range(0, p1, block_k):
                ke = min(ks + block_k, p1)
                s = _tile_logits(qb, k[:, :, ks:ke], cq, ck[..., ks:ke], p0, ks)
                m_new = torch.maximum(m, s.amax(-1))  # finite: key 0 is visible to every row
                rescale = torch.exp(m - m_new)
                p = s.sub_(m_new[..., None]).exp_()  # in place: the tile is not reused
                l = l * rescale + p.sum(-1)
                acc = acc * rescale[..., None] + p @ v[:, :, ks:ke]
                m = m_new
            o[:, :, qs:qe] = acc / l[..., None]
            lse[:, :, qs:qe] = m + torch.log(l)
        ctx.save_for_backward(q, k, v, c, o, lse)
        ctx.blocks = (block_q, block_k)
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, c, o, lse = ctx.saved_tensors
        block_q, block_k = ctx.blocks
        Tq, Tk = q.shape[2], k.shape[2]
        off = Tk - Tq
        do = upcast(do, q.dtype)
        delta = (do * o).sum(-1)  # (B, H, Tq): Σ_j P_ij dP_ij, the softmax backward's row term
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dc = torch.zeros(c.shape, dtype=q.dtype, device=q.device)
        for qs in range(0, Tq, block_q):
            qe = min(qs + block_q, Tq)
            p0, p1 = off + qs, off + qe
            cq, ck = _rebased(c, p0, p1, q.dtype)
            qb, dob = q[:, :, qs:qe], do[:, :, qs:qe]
            lse_b, delta_b = lse[:, :, qs:qe, None], delta[:, :, qs:qe, None]
            for ks in range(0, p1, block_k):
                ke = min(ks + block_k, p1)
                kb, vb = k[:, :, ks:ke], v[:, :, ks:ke]
                p = _tile_logits(qb, kb, cq, ck[..., ks:ke], p0, ks).sub_(lse_b).exp_()
                dv[:, :, ks:ke] += p.transpose(-1, -2) @ dob
                ds = (dob @ vb.transpose(-1, -2)).sub_(delta_b).mul_(p)  # dL/ds of the tile
                dq[:, :, qs:qe] += ds @ kb
                dk[:, :, ks:ke] += ds.transpose(-1, -2) @ qb
                # s_ij = ... + c_i - c_j: rows get +Σ_j ds_ij, columns get -Σ_i ds_ij
                dc[..., p0:p1] += ds.sum(-1)
                dc[..., ks:ke] -= ds.sum(-2)
        return dq, dk, dv, dc.to(c.dtype), None, None


def forgetting_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        log_fgate: torch.Tensor, *, scale: float | None = None,
                        block_q: int = BLOCK_Q, block_k: int = BLOCK_K) -> torch.Tensor:
    """Blockwise forgetting attention with an online softmax and a recomputing backward.

    q (B, Tq, H, D), k (B, Tk, H, D), v (B, Tk, H, Dv), log_fgate (B, Tk, H) -> o (B, Tq, H, Dv)
    in q's dtype. Tq < Tk means the first Tk - Tq keys are a cache (see the module docstring).
    Computes in the compute dtype (:mod:`lrm.dtypes`); memory O(T·(D + block)), never (Tq, Tk).
    """
    _check(q, k, v, log_fgate)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got {block_q}, {block_k}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, log_fgate)
    qh = rearrange(upcast(q, dtype) * scale, "b t h d -> b h t d").contiguous()
    kh, vh = (rearrange(upcast(t, dtype), "b t h d -> b h t d").contiguous() for t in (k, v))
    o = _BlockwiseForgettingAttn.apply(qh, kh, vh, _cumsum64(log_fgate), block_q, block_k)
    return rearrange(o, "b h t d -> b t h d").to(q.dtype)


# ----------------------------------------------------------------------------- fused CPU path
#
# The decay bias is a sum of a query term and a key term, s_ij = q_i·k_j + c_i − c_j, so it is
# itself a dot product: with q'_i = [q_i, c_i, 1] and k'_j = [k_j, 1, −c_j] (two more columns),
# s_ij = q'_i·k'_j. Forgetting attention is then plain softmax attention on (q', k', v), which
# PyTorch's fused CPU flash-attention kernel computes, forward and backward, without an (L, L)
# matrix. Per block of queries c is rebased exactly as in the blockwise path above (relative to
# the block's last row, in fp64, then cast), so the two paths round c alike. A block's keys are
# split into those before its first query (all visible: no mask) and the square on the
# diagonal (causal: the kernel's own mask); the two partial results are merged with their
# log-sum-exps. The backward calls the kernel's backward once per part with the merged output
# and log-sum-exp, which gives each part's exact share of the gradient (FlashAttention-2's
# backward needs only O and the LSE of the full row).

BLOCK_Q_FUSED = 1024  # queries per block of the fused path
_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward",
                     None)


def _augmented(q: torch.Tensor, k: torch.Tensor, c: torch.Tensor, p0: int, p1: int, qs: int,
               qe: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q' = [q, c_i, 1, 0...] for the queries qs..qe-1 (absolute rows p0..p1-1) and
    k' = [k, 1, −c_j, 0...] for the keys 0..p1-1, with c rebased to the block's last row;
    zero-padded to ``width`` columns (the kernel wants one head width for q, k and v)."""
    ref = c[..., p1 - 1:p1]
    cq = (c[..., p0:p1] - ref).to(q.dtype)[..., None]
    ck = (c[..., :p1] - ref).to(q.dtype)[..., None]
    pad = width - q.shape[-1] - 2
    qa = F.pad(torch.cat([q[:, :, qs:qe], cq, torch.ones_like(cq)], dim=-1), (0, pad))
    ka = F.pad(torch.cat([k[:, :, :p1], torch.ones_like(ck), -ck], dim=-1), (0, pad))
    return qa, ka


class _FusedForgettingAttn(torch.autograd.Function):
    """q (B, H, Tq, D) scaled, k (B, H, Tk, D), v (B, H, Tk, Dv) in the compute dtype; c
    (B, H, Tk) fp64. Queries are the last Tq positions. Returns o (B, H, Tq, Dv)."""

    @staticmethod
    def forward(ctx, q, k, v, c, block_q: int):  # type: ignore[override]
        B, H, Tq, D = q.shape
        off, Dv = k.shape[2] - Tq, v.shape[-1]
        width = max(D + 2, Dv)
        vp = F.pad(v, (0, width - Dv))  # zero columns: the output's extra columns are 0
        o = q.new_empty(B, H, Tq, Dv)
        lse = q.new_empty(B, H, Tq)
        for qs in range(0, Tq, block_q):
            qe = min(qs + block_q, Tq)
            p0, p1 = off + qs, off + qe
            qa, ka = _augmented(q, k, c, p0, p1, qs, qe, width)
            # the square on the diagonal, causal (its rows and columns are the same positions)
            o_b, l_b = _FLASH(qa, ka[:, :, p0:], vp[:, :, p0:p1], 0.0, True, scale=1.0)
            if p0 > 0:  # the keys before the block, all visible; merge by log-sum-exp
                o_a, l_a = _FLASH(qa, ka[:, :, :p0], vp[:, :, :p0], 0.0, False, scale=1.0)
                m = torch.maximum(l_a, l_b)
                w_a, w_b = torch.exp(l_a - m), torch.exp(l_b - m)
                total = w_a + w_b
                o_b = (o_a * w_a[..., None] + o_b * w_b[..., None]) / total[..., None]
                l_b = m + torch.log(total)
            o[:, :, qs:qe] = o_b[..., :Dv]
            lse[:, :, qs:qe] = l_b
        ctx.save_for_backward(q, k, v, c, o, lse)
        ctx.block_q = block_q
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, c, o, lse = ctx.saved_tensors
        block_q = ctx.block_q
        Tq, D = q.shape[2], q.shape[3]
        off, Dv = k.shape[2] - Tq, v.shape[-1]
        width = max(D + 2, Dv)
        vp, op = (F.pad(t, (0, width - Dv)) for t in (v, o))
        do = F.pad(do.to(q.dtype), (0, width - Dv))
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dc = torch.zeros(c.shape, dtype=q.dtype, device=q.device)
        for qs in range(0, Tq, block_q):
            qe = min(qs + block_q, Tq)
            p0, p1 = off + qs, off + qe
            qa, ka = _augmented(q, k, c, p0, p1, qs, qe, width)
            args = (do[:, :, qs:qe].contiguous(), qa)
            rest = (op[:, :, qs:qe].contiguous(), lse[:, :, qs:qe].contiguous(), 0.0)
            parts = [(p0, p1, True)] + ([(0, p0, False)] if p0 > 0 else [])
            for ks, ke, causal in parts:
                dqa, dka, dvb = _FLASH_BWD(*args, ka[:, :, ks:ke].contiguous(),
                                           vp[:, :, ks:ke].contiguous(), *rest, causal,
                                           scale=1.0)
                dq[:, :, qs:qe] += dqa[..., :D]
                dk[:, :, ks:ke] += dka[..., :D]
                dv[:, :, ks:ke] += dvb[..., :Dv]
                # s_ij = ... + c_i·1 + 1·(−c_j): rows get their column's gradient, keys minus
                dc[..., p0:p1] += dqa[..., D]
                dc[..., ks:ke] -= dka[..., D + 1]
        return dq, dk, dv, dc.to(c.dtype), None


def forgetting_attn_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          log_fgate: torch.Tensor, *, scale: float | None = None,
                          block_q: int = BLOCK_Q_FUSED) -> torch.Tensor:
    """Forgetting attention on PyTorch's fused CPU flash-attention kernel (see the section
    comment); the contract of :func:`forgetting_attn_ref`. CPU tensors only."""
    _check(q, k, v, log_fgate)
    if _FLASH is None or _FLASH_BWD is None:
        raise RuntimeError("this PyTorch has no fused CPU flash-attention op; use "
                           "forgetting_attn_ref")
    if q.device.type != "cpu":
        raise ValueError("forgetting_attn_fused runs on CPU tensors; use forgetting_attn")
    if block_q < 1:
        raise ValueError(f"block_q must be >= 1, got {block_q}")
    dtype = compute_dtype(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh = rearrange(upcast(q, dtype) * scale, "b t h d -> b h t d").contiguous()
    kh, vh = (rearrange(upcast(t, dtype), "b t h d -> b h t d").contiguous() for t in (k, v))
    o = _FusedForgettingAttn.apply(qh, kh, vh, _cumsum64(log_fgate), block_q)
    return rearrange(o, "b h t d -> b t h d").to(q.dtype)


# ----------------------------------------------------------------------------- dispatch


def forgetting_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_fgate: torch.Tensor,
                    *, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Dispatching forgetting attention; same contract as :func:`forgetting_attn_ref`.

    The fla kernel serves CUDA tensors without a cache (Tq == Tk), head width <= 256,
    fp32/fp16/bf16; it computes c with its own fp32 cumsum. CPU tensors run on
    :func:`forgetting_attn_fused` (PyTorch's fused CPU flash attention); other devices on the
    blockwise :func:`forgetting_attn_ref`.
    """
    _check(q, k, v, log_fgate)
    ok = (q.shape[1] == k.shape[1] and q.shape[-1] <= 256 and v.shape[-1] <= 256
          and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
          and q.dtype == k.dtype == v.dtype)
    if _kernels.use_kernel("forgetting_attn", backend, "parallel_forgetting_attn",
                           q, k, v, log_fgate, supported=ok,
                           why_unsupported="the kernel needs Tq == Tk (no KV cache), head width "
                                           "<= 256 and one fp32/fp16/bf16 dtype"):
        fn = _kernels.get("parallel_forgetting_attn")
        return fn(q, k, v, log_fgate.to(torch.float32), scale=scale)
    if q.device.type == "cpu" and _FLASH is not None and _FLASH_BWD is not None:
        return forgetting_attn_fused(q, k, v, log_fgate, scale=scale)
    return forgetting_attn_ref(q, k, v, log_fgate, scale=scale)
