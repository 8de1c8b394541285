"""Landmark attention (Mohtashami & Jaggi, NeurIPS 2023): a grouped softmax that routes every
query to earlier blocks through one landmark token per block, and top-k block retrieval.

The sequence is cut into blocks of ``block_len`` ordinary tokens, each followed by its landmark
(inserted by the model, see ``lrm.model.LRModel``). With P = block_len + 1, position t lies in
block ⌊t / P⌋ and is a landmark when (t + 1) mod P = 0.

Grouped softmax (training; upstream's ``landmark_grouped_softmax``). Query i in block c:

    G_i = {ordinary j in block c with j ≤ i} ∪ {landmark ℓ_b : b < c}      (never ℓ_c, even
                                                                             when i = ℓ_c)
    π_i(g) = exp(s_ig) / Σ_{g' ∈ G_i} exp(s_ig')                           outer softmax
    w_ij = π_i(j)                                for j ordinary in block c, j ≤ i
    w_ij = π_i(ℓ_b) · exp(s_ij) / Σ_{j' ∈ b} exp(s_ij')   for j ordinary in block b < c
    w_ij = 0                                     for every landmark j (no value of its own)
    o_i = Σ_j w_ij v_j,   s_ij = scale · q_i·k_j

Σ_j w_ij = 1. With T ≤ block_len there is no landmark and this is causal softmax attention.

Top-k retrieval (inference; upstream's memory cache, ``llama/llama_mem.py`` and
``lm_benchmark/models/caches/mem_cache.py``). Query i in block c, with n = c complete earlier
blocks and k' = min(k, n):

    1. score each landmark ℓ_b, b < c, against q_i, and keep the k' best blocks, per query and
       per head; scores closer than a tie tolerance go to the most recent block (lrm's rule:
       see ``TIE_TOL``; upstream leaves ties to ``torch.topk``);
    2. the grouped softmax above, with G_i restricted to the retrieved landmarks and the ordinary
       tokens of block c up to i (the local context), and the inner softmax over the retrieved
       blocks' ordinary tokens.

Positions in retrieval (RoPE; upstream's scheme). The cache holds keys *before* RoPE; positions
are handed out per query so that no distance exceeds (k + 2)·P, a range seen in training. In
units of blocks, the query's block sits at slot k' + 1, and

    - scoring: landmark ℓ_b sits at slot max(0, k' + 1 − (c − b)): the k' most recent blocks at
      their true distance, every older one at the farthest slot 0 (distance k' + 1);
    - attending: the retrieved blocks, sorted by their original order, take slots r = 0..k'−1,
      shifted by one slot when the block is one of the k' most recent (so that retrieving
      exactly the k' most recent blocks gives them their true positions);
    - token j of a block at slot σ has position σ·P + (j mod P); the local context keeps its
      true offsets within block c.

We chose upstream's LLaMA scheme (the same as its ``rotary_mem_jump`` cache) because it is what
the paper's passkey results were measured with, and because it keeps every relative distance
inside the training range however long the cache grows. Only relative positions matter to RoPE,
so the op rotates queries by the distance and keys by their offset within their block: angles
stay small and exact at any cache length.

Retrieval with k ≥ n (every earlier block retrieved) gives every key its true relative position
and the same G_i, so it *equals* the grouped softmax (up to rounding of the rotations); the
tests check it. With k < n it differs in two ways: the outer softmax renormalises over the
retrieved landmarks only, and older retrieved blocks sit at shifted positions.

Chunked retrieval (upstream's long-input evaluation, ``--mid_length`` in its benchmark and the
LLaMA cache: the input is fed in chunks and only what lies before a chunk is in the memory
cache). ``chunk`` = m·block_len ordinary tokens cuts the positions into chunks of m blocks
(m·P positions, aligned at absolute position 0). Query i in block c of the chunk whose first
block is c0, with k' = min(k, c0):

    1. retrieval as above, but only among the cache blocks b < c0 and once per query: the
       k' best by landmark score (ties within TIE_TOL to the most recent block);
    2. G_i = {retrieved landmarks} ∪ {ordinary j in block c, j ≤ i} ∪ {ℓ_b : c0 ≤ b < c}:
       the grouped softmax of the chunk, with the retrieved blocks as extra earlier blocks;
    3. positions: the chunk's tokens at (k' + 1)·P + (t − c0·P) (the chunk follows k' + 1
       slots, as upstream's start index); scoring and retrieved blocks as above with c0 in
       place of c.

With m = 1 the chunk is the query's block and this is the retrieval above (the tests check it);
with no cache (Tk ≤ m·P) it is the grouped softmax (RoPE at the true relative positions).

Which mode made which number: every retrieval number in ``docs/claims/landmark.md`` so far was
measured per query (``chunk=None``, the same as ``chunk=block_len``); the grouped-softmax rows
use ``landmark_attn``.

Symbols: B batch, Tq queries, Tk keys (the queries are the last Tq positions; the first Tk − Tq
keys are a cache), H heads, D head width, P = block_len + 1, c block of the query, b an earlier
block, ℓ_b its landmark, k = ``topk``, scale = 1/√D by default.

Forms:
- ``landmark_attn_quadratic_ref``: the (Tq, Tk) weight matrix of the equations, for tests;
- ``landmark_attn_recurrent_ref``: a loop over queries, one grouped softmax each (the oracle);
- ``landmark_attn_ref``: the CPU path. Query rows in chunks of whole blocks; a chunk holds
  (rows × Tk) scores, never (Tq, Tk); each chunk is recomputed in the backward pass
  (activation checkpointing), so forward and backward memory grow linearly in T;
- ``landmark_retrieval_attn_ref`` / ``landmark_retrieval_recurrent_ref``: top-k retrieval,
  chunked over query rows / looped over queries, heads and batch (the oracle);
  ``landmark_retrieval_attn_ref(..., chunk=...)``: chunked retrieval (its oracle is written
  out in the tests).

No kernel package ships landmark attention (upstream's Triton kernel is not packaged), so the
reference is the only path; ``landmark_attn(..., backend="kernel")`` says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from lrm.dtypes import compute_dtype, upcast
from lrm.nn import rope
from lrm.ops.attention import attention

BLOCK_Q = 128  # query rows per chunk (rounded down to whole landmark blocks, at least one)

_NEG = float("-inf")

# Ties in retrieval go to the most recent block. In the first layer every landmark has the same
# input, so scores tie exactly in exact arithmetic, but keys computed in different chunks of a
# stream differ in their last bits (a GEMM rounds differently for different row counts). So a
# tie is "within TIE_TOL of the row's largest |score|": block b < c gets the bonus
# TIE_TOL · max|s| · (b + 1) / c before ranking. Adjacent blocks are then TIE_TOL · max|s| / c
# apart, far above rounding noise, and no ranking moves by more than TIE_TOL · max|s|.
TIE_TOL = 1e-3


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_len: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("landmark attention expects q (B, Tq, H, D) and k, v (B, Tk, H, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    if k.shape != (B, Tk, H, D) or v.shape[:3] != (B, Tk, H):
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if Tq > Tk or Tq == 0:
        raise ValueError(f"need 1 <= Tq <= Tk (queries are the last Tq keys); got Tq={Tq}, "
                         f"Tk={Tk}")
    if not isinstance(block_len, int) or block_len < 1:
        raise ValueError(f"block_len must be a positive int, got {block_len!r}")


def is_landmark(pos: torch.Tensor, block_len: int) -> torch.Tensor:
    """True where an absolute position holds a landmark: (pos + 1) mod (block_len + 1) == 0."""
    return (pos + 1) % (block_len + 1) == 0


def _prepare(q, k, v, scale):
    dt = compute_dtype(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh = (rearrange(upcast(t, dt), "b t h d -> b h t d") for t in (q, k, v))
    return qh, kh, vh, scale


# ----------------------------------------------------------------------------- oracles


def landmark_attn_quadratic_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                block_len: int, scale: float | None = None) -> torch.Tensor:
    """The grouped softmax as one (Tq, Tk) weight matrix W, built from the equations. For tests."""
    _check(q, k, v, block_len)
    qh, kh, vh, scale = _prepare(q, k, v, scale)
    Tq, Tk, P = q.shape[1], k.shape[1], block_len + 1
    s = scale * qh @ kh.transpose(-1, -2)  # (B, H, Tq, Tk)
    pq = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    pk = torch.arange(Tk, device=q.device)[None, :]
    cq, ck, lm = pq // P, pk // P, is_landmark(pk, block_len)
    own = (ck == cq) & ~lm & (pk <= pq)  # ordinary tokens of the query's block, up to i
    lm_prev = lm & (ck < cq)  # landmarks of earlier blocks
    tok_prev = ~lm & (ck < cq)  # ordinary tokens of earlier blocks
    pi = torch.softmax(s.masked_fill(~(own | lm_prev), _NEG), dim=-1)  # outer softmax
    # inner softmax of each earlier block: exp, then sums per block through a one-hot matrix
    n_blocks = (Tk + P - 1) // P
    onehot = F.one_hot(torch.arange(Tk, device=q.device) // P, n_blocks).to(s.dtype)  # (Tk, nb)
    e = torch.exp(s - s.amax(-1, keepdim=True)) * tok_prev
    z = (e @ onehot) @ onehot.T  # Σ_{j' in block(j)} e_ij'
    inner = torch.where(tok_prev, e / z.clamp_min(torch.finfo(s.dtype).tiny), 0.0)
    # π_i(landmark of block(j)), read at column ℓ_b = b·P + P − 1
    lm_col = (torch.arange(Tk, device=q.device) // P) * P + P - 1
    pi_lm = pi[..., lm_col.clamp(max=Tk - 1)]
    w = torch.where(own, pi, 0.0) + pi_lm * inner
    return rearrange(w @ vh, "b h t d -> b t h d").to(q.dtype)


def landmark_attn_recurrent_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                block_len: int, scale: float | None = None) -> torch.Tensor:
    """One query at a time: gather its group set G_i, softmax, then one softmax per earlier
    block. Slow; the oracle."""
    _check(q, k, v, block_len)
    qh, kh, vh, scale = _prepare(q, k, v, scale)
    Tq, Tk, P = q.shape[1], k.shape[1], block_len + 1
    outs = []
    for i in range(Tq):
        p = Tk - Tq + i
        c = p // P
        own = [j for j in range(c * P, p + 1) if (j + 1) % P]  # ordinary, up to p
        lms = [b * P + P - 1 for b in range(c)]
        s = scale * torch.einsum("bhd,bhjd->bhj", qh[:, :, i], kh[:, :, own + lms])
        pi = torch.softmax(s, dim=-1)
        o = torch.einsum("bhj,bhjd->bhd", pi[..., :len(own)], vh[:, :, own])
        for b in range(c):
            toks = list(range(b * P, b * P + P - 1))
            inner = torch.softmax(scale * torch.einsum("bhd,bhjd->bhj", qh[:, :, i],
                                                       kh[:, :, toks]), dim=-1)
            o = o + pi[..., len(own) + b, None] * torch.einsum("bhj,bhjd->bhd", inner,
                                                               vh[:, :, toks])
        outs.append(o)
    return rearrange(torch.stack(outs, dim=2), "b h t d -> b t h d").to(q.dtype)


# ----------------------------------------------------------------------------- blockwise


def _chunks(q0: int, q1: int, P: int, block_q: int):
    """Query row ranges [a, b) covering absolute positions q0..q1-1, cut at multiples of a
    whole number of landmark blocks."""
    rows = max(1, block_q // P) * P
    a = q0
    while a < q1:
        b = min((a // rows + 1) * rows, q1)
        yield a, b
        a = b


def _grouped_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_ord: torch.Tensor,
                  p0: int, P: int, scale: float) -> torch.Tensor:
    """Grouped softmax for rows at absolute positions p0..p0+R-1: q (B, H, R, D), k and v
    (B, H, n, ·) the keys 0..n-1 with n = p0 + R, v_ord (B, H, ≥ m·(P−1), Dv) the values of
    the ordinary tokens of the first m = p0 // P blocks. Holds (R, n) scores.

    Keys split in two: the m blocks that end before the chunk's first row ("earlier" for every
    row: no mask) and the chunk's own blocks (masked per row, at most R + P keys)."""
    R, n = q.shape[2], k.shape[2]
    m = p0 // P  # complete blocks before every row of the chunk
    lo = m * P
    nbl = -(-(n - lo) // P)
    pad = lo + nbl * P - n
    # own blocks: (B, H, R, n − lo) -> (B, H, R, nbl, P), key j at block m + j // P
    s = F.pad(scale * q @ k[:, :, lo:].transpose(-1, -2), (0, pad), value=_NEG)
    s = rearrange(s, "b h r (n p) -> b h r n p", p=P)
    dev = q.device
    pos = torch.arange(p0, p0 + R, device=dev)[:, None, None]  # (R, 1, 1)
    c = pos // P
    blk = m + torch.arange(nbl, device=dev)[None, :, None]  # (1, nbl, 1)
    off = torch.arange(P, device=dev)[None, None, :]  # (1, 1, P)
    lm_col = off == P - 1
    prev = blk < c  # (R, nbl, 1): an earlier block
    own = (blk == c) & ~lm_col & (blk * P + off <= pos)
    outer = own | (prev & lm_col)  # every row has >= 1: its own first token
    logits = rearrange(s.masked_fill(~outer, _NEG), "b h r n p -> b h r (n p)")
    if m:  # the landmarks of the m earlier blocks join the outer softmax
        s_pre = rearrange(scale * q @ k[:, :, :lo].transpose(-1, -2), "b h r (n p) -> b h r n p",
                          p=P)
        logits = torch.cat([s_pre[..., P - 1], logits], dim=-1)
    pi = torch.softmax(logits, dim=-1)
    pi_pre, pi = pi[..., :m], rearrange(pi[..., m:], "b h r (n p) -> b h r n p", p=P)
    inner_mask = prev & ~lm_col
    # blocks that are not earlier get finite logits 0 (and weight 0 below): no NaN anywhere
    inner = torch.softmax(torch.where(inner_mask, s, torch.where(prev, _NEG, 0.0)), dim=-1)
    w = torch.where(own, pi, 0.0) + torch.where(inner_mask, pi[..., P - 1:] * inner, 0.0)
    vb = F.pad(v[:, :, lo:], (0, 0, 0, pad))  # zero rows for the padding
    o = rearrange(w, "b h r n p -> b h r (n p)") @ vb
    if m:  # earlier blocks: π(ℓ_b) · softmax within b, over the ordinary tokens only
        w_pre = pi_pre[..., None] * torch.softmax(s_pre[..., :P - 1], dim=-1)
        o = o + rearrange(w_pre, "b h r n p -> b h r (n p)") @ v_ord[:, :, :m * (P - 1)]
    return o


def landmark_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_len: int,
                      scale: float | None = None, block_q: int = BLOCK_Q) -> torch.Tensor:
    """Blockwise grouped softmax. q (B, Tq, H, D), k (B, Tk, H, D), v (B, Tk, H, Dv), already
    position-encoded, -> o (B, Tq, H, Dv) in q's dtype.

    Tq < Tk: the queries are the last Tq positions and the first Tk − Tq keys are a cache
    (streaming and decoding; landmark positions are absolute, so a chunk may start mid-block).
    Query rows go in chunks of whole blocks (about ``block_q`` rows); a chunk holds
    (rows × Tk) scores and is recomputed in the backward pass, so memory is O(T·(D + block_q)).
    """
    _check(q, k, v, block_len)
    qh, kh, vh, scale = _prepare(q, k, v, scale)
    Tq, Tk, P = q.shape[1], k.shape[1], block_len + 1
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (qh, kh, vh))
    # the values of the ordinary tokens of the complete blocks, landmarks dropped, once
    v_ord = rearrange(vh[:, :, :(Tk // P) * P], "b h (n p) d -> b h n p d", p=P)[..., :P - 1, :]
    v_ord = rearrange(v_ord, "b h n p d -> b h (n p) d")
    outs = []
    for a, b in _chunks(Tk - Tq, Tk, P, block_q):
        args = (qh[:, :, a - (Tk - Tq):b - (Tk - Tq)], kh[:, :, :b], vh[:, :, :b], v_ord, a, P,
                scale)
        outs.append(checkpoint(_grouped_rows, *args, use_reentrant=False) if save
                    else _grouped_rows(*args))
    return rearrange(torch.cat(outs, dim=2), "b h t d -> b t h d").to(q.dtype)


# ----------------------------------------------------------------------------- retrieval


def _retrieval_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p0: int, P: int,
                    topk: int, scale: float, base: float, want_blocks: bool):
    """Top-k retrieval for rows at absolute positions p0..p0+R-1: q (B, H, R, D) and k
    (B, H, n, D) *without* RoPE, v (B, H, n, Dv), n = p0 + R. Returns o (B, H, R, Dv) and,
    if asked, the retrieved block ids (B, H, R, k'') with -1 for unused ranks."""
    B, H, R, D = q.shape
    n, dev = k.shape[2], q.device
    pos = torch.arange(p0, p0 + R, device=dev)
    c, jq = pos // P, pos % P  # (R,)
    kp = c.clamp(max=topk)  # k' = min(k, n) per row
    # keys rotated by their offset in the block; queries by δ·P + offset for δ = 0..k+1 blocks
    # back: <R(a)q, R(b)k> = <R(a − b)q, k>, so only these relative angles are ever formed
    # (only the keys that are read get rotated: landmarks, retrieved blocks, the local block)
    delta = torch.arange(topk + 2, device=dev)
    qd = rope(q[:, :, :, None, :].expand(B, H, R, topk + 2, D),
                 delta[None, :] * P + jq[:, None], base)  # (B, H, R, k+2, D)

    # local context: the ordinary tokens of the query's own block up to the query
    lo = int(c[0]) * P
    kpos = torch.arange(lo, n, device=dev)
    local = ((kpos[None, :] // P == c[:, None]) & (kpos[None, :] <= pos[:, None])
             & ~is_landmark(kpos, P - 1)[None, :])  # (R, n − lo)
    k_local = rope(k[:, :, lo:], kpos % P, base)
    s_loc = scale * qd[:, :, :, 0] @ k_local.transpose(-1, -2)
    s_loc = s_loc.masked_fill(~local, _NEG)
    o_loc_v = v[:, :, lo:]

    n_lm = int(c[-1])  # complete blocks before the last row's block
    kk = min(topk, n_lm)
    if kk == 0:  # no earlier block for any row: causal attention within the block
        o = torch.softmax(s_loc, -1) @ o_loc_v
        return o, (torch.full((B, H, R, 0), -1, device=dev) if want_blocks else None)

    lms = k[:, :, P - 1:n_lm * P:P]  # (B, H, n_lm, D), landmark keys rotated by P − 1
    lms = rope(lms, torch.full((n_lm,), P - 1, device=dev), base)
    b_ids = torch.arange(n_lm, device=dev)
    valid_lm = b_ids[None, :] < c[:, None]  # (R, n_lm)
    # 1. scoring: every landmark at distance k' + 1 blocks, then the k' nearest at their own
    q_far = qd.gather(3, (kp + 1).view(1, 1, R, 1, 1).expand(B, H, R, 1, D)).squeeze(3)
    s_lm = F.pad(q_far @ lms.transpose(-1, -2), (0, 1))  # a spare column for the scatter
    d_near = torch.arange(1, topk + 1, device=dev)  # δ = c − b
    b_near = c[:, None] - d_near[None, :]  # (R, k)
    near_ok = d_near[None, :] <= kp[:, None]
    b_near = torch.where(near_ok, b_near, n_lm)  # unused: the spare column
    lm_near = lms.gather(2, b_near.clamp(max=n_lm - 1).reshape(1, 1, -1, 1).expand(
        B, H, R * topk, D)).view(B, H, R, topk, D)
    s_near = (qd[:, :, :, 1:topk + 1] * lm_near).sum(-1)  # (B, H, R, k)
    s_lm = s_lm.scatter(3, b_near.expand(B, H, R, topk), s_near)[..., :n_lm]
    s_lm = s_lm.masked_fill(~valid_lm, 0.0)
    ref = s_lm.detach().abs().amax(-1, keepdim=True)  # (B, H, R, 1)
    recency = (b_ids[None, :] + 1) / c.clamp(min=1)[:, None]  # (R, n_lm), in (0, 1] if b < c
    s_lm = (s_lm + TIE_TOL * ref * recency).masked_fill(~valid_lm, _NEG)
    # top-k'' per query and head, in original block order; ranks past a row's k' point at
    # blocks b >= c (scores -inf), which sort after the valid ones. Ties within TIE_TOL go to
    # the most recent block (above); exact ties left (all scores 0) too, by the flip
    order = torch.sort(s_lm.flip(-1), dim=-1, descending=True, stable=True).indices
    idx = (n_lm - 1 - order[..., :kk]).sort(dim=-1).values  # (B, H, R, kk)
    ok = idx < c.view(1, 1, R, 1)

    # 2. positions of the retrieved blocks: rank r at slot r, +1 if among the k' most recent
    kp4 = kp.view(1, 1, R, 1)
    slot = torch.arange(kk, device=dev) + (idx >= c.view(1, 1, R, 1) - kp4).long()
    d_ret = (kp4 + 1 - slot).clamp(0, topk + 1)  # blocks back from the query's block
    q_ret = qd.gather(3, d_ret[..., None].expand(B, H, R, kk, D))  # (B, H, R, kk, D)
    kb = rearrange(k[:, :, :n_lm * P], "b h (n p) d -> b h n p d", p=P)
    vb = rearrange(v[:, :, :n_lm * P], "b h (n p) d -> b h n p d", p=P)
    gidx = idx.reshape(B, H, R * kk, 1, 1)
    k_ret = kb.gather(2, gidx.expand(B, H, R * kk, P, D)).view(B, H, R, kk, P, D)
    k_ret = rope(k_ret, torch.arange(P, device=dev), base)  # by the offset in the block
    v_ret = vb.gather(2, gidx.expand(B, H, R * kk, P, vb.shape[-1])).view(
        B, H, R, kk, P, vb.shape[-1])
    s_ret = scale * torch.einsum("bhrkd,bhrkpd->bhrkp", q_ret, k_ret)  # (B, H, R, kk, P)

    # 3. grouped softmax over {retrieved landmarks, local context}, inner softmax per block
    s_out = torch.cat([s_ret[..., P - 1].masked_fill(~ok, _NEG), s_loc], dim=-1)
    pi = torch.softmax(s_out, dim=-1)
    inner = torch.softmax(s_ret[..., :P - 1], dim=-1)  # finite: every rank has real keys
    o_ret = torch.einsum("bhrkp,bhrkpd->bhrkd", inner, v_ret[..., :P - 1, :])
    o = (pi[..., :kk, None] * o_ret).sum(3) + pi[..., kk:] @ o_loc_v
    blocks = torch.where(ok, idx, -1) if want_blocks else None
    return o, blocks


def _chunk_retrieval_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p0: int, c0: int,
                          P: int, topk: int, scale: float, base: float, want_blocks: bool):
    """Chunked retrieval for rows at absolute positions p0..p0+R-1, all inside the chunk whose
    first block is c0: q (B, H, R, D) and k (B, H, n, D) *without* RoPE, v (B, H, n, Dv),
    n = p0 + R. The chunk's keys (from c0·P) take part in a grouped softmax; the blocks before
    c0 are a cache read by top-k retrieval. Returns o (B, H, R, Dv) and, if asked, the
    retrieved block ids (B, H, R, k') with -1 for unused ranks."""
    B, H, R, D = q.shape
    n, dev = k.shape[2], q.device
    kp = min(topk, c0)  # k': blocks retrieved from the cache (the same for every row)
    lo = c0 * P
    shift = (kp + 1) * P - lo  # virtual position = absolute + shift inside the chunk
    pos = torch.arange(p0, p0 + R, device=dev)
    qr = rope(q, pos + shift, base)

    # the chunk: grouped softmax over its own keys (module docstring, G_i inside the chunk)
    kpos = torch.arange(lo, n, device=dev)
    k_in, v_in = rope(k[:, :, lo:], kpos + shift, base), v[:, :, lo:]
    s_in = scale * qr @ k_in.transpose(-1, -2)  # (B, H, R, n − lo)
    cq, ck, lm = pos[:, None] // P, kpos[None, :] // P, is_landmark(kpos, P - 1)[None, :]
    own = (ck == cq) & ~lm & (kpos[None, :] <= pos[:, None])
    lm_prev, tok_prev = lm & (ck < cq), ~lm & (ck < cq)
    outer_in = s_in.masked_fill(~(own | lm_prev), _NEG)
    # inner softmax of each earlier block of the chunk, by its own maximum (exact, no overflow)
    nb = -(-(n - lo) // P)
    pad = nb * P - (n - lo)
    sb = rearrange(F.pad(s_in.masked_fill(~tok_prev, _NEG), (0, pad), value=_NEG),
                   "b h r (n p) -> b h r n p", p=P)
    inner_in = torch.softmax(torch.where(sb.isinf().all(-1, keepdim=True), 0.0, sb), dim=-1)
    inner_in = rearrange(inner_in, "b h r n p -> b h r (n p)")[..., :n - lo]
    inner_in = torch.where(tok_prev, inner_in, 0.0)

    blocks = torch.full((B, H, R, 0), -1, device=dev) if want_blocks else None
    if kp == 0:  # no cache: the grouped softmax of the chunk alone
        logits = outer_in
    else:  # 1. score the cache's landmarks; ℓ_b at slot max(0, k' + 1 − (c0 − b))
        b_ids = torch.arange(c0, device=dev)
        lm_slot = (kp + 1 - (c0 - b_ids)).clamp(min=0)
        lms = rope(k[:, :, P - 1:c0 * P:P], lm_slot * P + P - 1, base)  # (B, H, c0, D)
        s_lm = qr @ lms.transpose(-1, -2)  # (B, H, R, c0)
        ref = s_lm.detach().abs().amax(-1, keepdim=True)
        s_rank = s_lm + TIE_TOL * ref * (b_ids + 1) / c0  # ties to the most recent (TIE_TOL)
        order = torch.sort(s_rank.flip(-1), dim=-1, descending=True, stable=True).indices
        idx = (c0 - 1 - order[..., :kp]).sort(dim=-1).values  # (B, H, R, k'), block order
        # 2. the retrieved blocks at slot r, one more when among the k' most recent
        slot = torch.arange(kp, device=dev) + (idx >= c0 - kp).long()
        kb = rearrange(k[:, :, :c0 * P], "b h (n p) d -> b h n p d", p=P)
        vb = rearrange(v[:, :, :c0 * P], "b h (n p) d -> b h n p d", p=P)
        gidx = idx.reshape(B, H, R * kp, 1, 1)
        k_ret = kb.gather(2, gidx.expand(B, H, R * kp, P, D)).view(B, H, R, kp, P, D)
        v_ret = vb.gather(2, gidx.expand(B, H, R * kp, P, vb.shape[-1])).view(
            B, H, R, kp, P, vb.shape[-1])
        k_ret = rope(k_ret, slot[..., None] * P + torch.arange(P, device=dev), base)
        s_ret = scale * torch.einsum("bhrd,bhrkpd->bhrkp", qr, k_ret)
        inner = torch.softmax(s_ret[..., :P - 1], dim=-1)
        o_ret = torch.einsum("bhrkp,bhrkpd->bhrkd", inner, v_ret[..., :P - 1, :])
        logits = torch.cat([s_ret[..., P - 1], outer_in], dim=-1)  # 3. one outer softmax
        if want_blocks:
            blocks = idx
    pi = torch.softmax(logits, dim=-1)
    pi_ret, pi_in = pi[..., :logits.shape[-1] - (n - lo)], pi[..., logits.shape[-1] - (n - lo):]
    # π(ℓ_b) of each chunk key's block, read at the block's landmark column
    lm_col = (torch.arange(n - lo, device=dev) // P) * P + P - 1
    pi_lm = pi_in[..., lm_col.clamp(max=n - lo - 1)]
    w_in = torch.where(own, pi_in, 0.0) + pi_lm * inner_in
    o = w_in @ v_in
    if kp:
        o = o + (pi_ret[..., None] * o_ret).sum(3)
    return o, blocks


def _chunk_retrieval(qh, kh, vh, P: int, topk: int, chunk_blocks: int, scale: float,
                     base: float, want_blocks: bool):
    """Upstream's long-input evaluation: the positions cut into chunks of ``chunk_blocks``
    whole blocks, each chunk's rows answered by :func:`_chunk_retrieval_rows`."""
    Tq, Tk = qh.shape[2], kh.shape[2]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (qh, kh, vh))
    C = chunk_blocks * P
    outs, blocks = [], []
    a = Tk - Tq
    while a < Tk:
        b = min((a // C + 1) * C, Tk)
        args = (qh[:, :, a - (Tk - Tq):b - (Tk - Tq)], kh[:, :, :b], vh[:, :, :b], a,
                (a // C) * chunk_blocks, P, topk, scale, base, want_blocks)
        o, blk = (checkpoint(_chunk_retrieval_rows, *args, use_reentrant=False) if save
                  else _chunk_retrieval_rows(*args))
        outs.append(o)
        blocks.append(blk)
        a = b
    return outs, blocks


def landmark_retrieval_attn_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                block_len: int, topk: int, rope_base: float = 10000.0,
                                scale: float | None = None, block_q: int = BLOCK_Q,
                                chunk: int | None = None, return_blocks: bool = False):
    """Top-k landmark retrieval (module docstring). q (B, Tq, H, D) and k (B, Tk, H, D)
    *before* RoPE (the op assigns positions), v (B, Tk, H, Dv) -> o (B, Tq, H, Dv) in q's
    dtype; with ``return_blocks`` also the retrieved block ids (B, Tq, H, min(topk, n))
    in original order, -1 for unused ranks. Queries are the last Tq positions.

    ``chunk``: None answers every query from its own block and its top-k blocks (token-by-token
    decoding); a number of ordinary tokens, a multiple of ``block_len``, is upstream's long-input
    evaluation ("Chunked retrieval" in the module docstring). ``chunk=block_len`` equals None."""
    _check(q, k, v, block_len)
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1 or chunk % block_len):
        raise ValueError(f"chunk must be None or a positive multiple of block_len={block_len} "
                         f"(the chunk length in ordinary tokens, whole blocks), got {chunk!r}")
    qh, kh, vh, scale = _prepare(q, k, v, scale)
    Tq, Tk, P = q.shape[1], k.shape[1], block_len + 1
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (qh, kh, vh))
    outs, blocks = [], []
    kmax = min(topk, (Tk - 1) // P)
    if chunk is not None:
        outs, blocks = _chunk_retrieval(qh, kh, vh, P, topk, chunk // block_len, scale,
                                        rope_base, return_blocks)
        o = rearrange(torch.cat(outs, dim=2), "b h t d -> b t h d").to(q.dtype)
        if return_blocks:
            blocks = [F.pad(blk, (0, kmax - blk.shape[-1]), value=-1) for blk in blocks]
            return o, rearrange(torch.cat(blocks, dim=2), "b h t k -> b t h k")
        return o
    for a, b in _chunks(Tk - Tq, Tk, P, block_q):
        args = (qh[:, :, a - (Tk - Tq):b - (Tk - Tq)], kh[:, :, :b], vh[:, :, :b], a, P, topk,
                scale, rope_base, return_blocks)
        if save:
            o, blk = checkpoint(_retrieval_rows, *args, use_reentrant=False)
        else:
            o, blk = _retrieval_rows(*args)
        outs.append(o)
        if return_blocks:  # pad the ranks to the widest chunk's
            blocks.append(F.pad(blk, (0, kmax - blk.shape[-1]), value=-1))
    o = rearrange(torch.cat(outs, dim=2), "b h t d -> b t h d").to(q.dtype)
    if return_blocks:
        return o, rearrange(torch.cat(blocks, dim=2), "b h t k -> b t h k")
    return o


def landmark_retrieval_recurrent_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                     block_len: int, topk: int, rope_base: float = 10000.0,
                                     scale: float | None = None) -> torch.Tensor:
    """Retrieval one query, head and sequence at a time, with every position written out as
    an absolute (virtual) position and rotated there. Slow; the oracle."""
    _check(q, k, v, block_len)
    qh, kh, vh, scale = _prepare(q, k, v, scale)
    B, H, Tq, _ = qh.shape
    Tk, P = k.shape[1], block_len + 1
    out = torch.zeros(B, H, Tq, vh.shape[-1], dtype=qh.dtype, device=q.device)

    def rot(x, p):  # x (m, D) at positions p (list of m ints)
        return rope(x, torch.tensor(p, device=q.device), rope_base)

    for i in range(Tq):
        p = Tk - Tq + i
        c, kp = p // P, min(topk, p // P)
        qpos = (kp + 1) * P + p % P  # the query's block at slot k' + 1
        own = [j for j in range(c * P, p + 1) if (j + 1) % P]
        for bi in range(B):
            for h in range(H):
                qv = rot(qh[bi, h, i][None], [qpos])[0]
                chosen = []
                if kp:
                    lm_pos = [max(0, kp + 1 - (c - b)) * P + P - 1 for b in range(c)]
                    lms = rot(kh[bi, h, [b * P + P - 1 for b in range(c)]], lm_pos)
                    score = (lms @ qv).tolist()
                    top = max(abs(s) for s in score)  # ties to the most recent (TIE_TOL)
                    score = [s + TIE_TOL * top * (b + 1) / c for b, s in enumerate(score)]
                    chosen = sorted(sorted(range(c), key=lambda b: (-score[b], -b))[:kp])
                logits, groups = [], []  # groups: ("tok", j, pos) or ("blk", b, slot)
                for r, b in enumerate(chosen):
                    slot = r + int(b >= c - kp)
                    kl = rot(kh[bi, h, b * P + P - 1][None], [slot * P + P - 1])[0]
                    logits.append(scale * qv @ kl)
                    groups.append(("blk", b, slot))
                for j in own:
                    kj = rot(kh[bi, h, j][None], [(kp + 1) * P + j % P])[0]
                    logits.append(scale * qv @ kj)
                    groups.append(("tok", j, None))
                pi = torch.softmax(torch.stack(logits), 0)
                o = torch.zeros_like(out[bi, h, i])
                for w, (kind, j, slot) in zip(pi, groups, strict=True):
                    if kind == "tok":
                        o = o + w * vh[bi, h, j]
                        continue
                    toks = list(range(j * P, j * P + P - 1))
                    kt = rot(kh[bi, h, toks], [slot * P + t % P for t in toks])
                    inner = torch.softmax(scale * kt @ qv, 0)
                    o = o + w * (inner @ vh[bi, h, toks])
                out[bi, h, i] = o
    return rearrange(out, "b h t d -> b t h d").to(q.dtype)


# ----------------------------------------------------------------------------- dispatch


def landmark_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_len: int,
                  scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """The dispatch point of the grouped softmax. While the keys hold no landmark (Tk ≤
    block_len) it is causal softmax attention and runs on :func:`lrm.ops.attention.attention`;
    otherwise the reference is the only path."""
    if backend not in ("auto", "ref", "kernel"):
        raise ValueError(f"backend must be 'auto', 'ref' or 'kernel', got {backend!r}")
    if backend == "kernel":
        raise RuntimeError("no kernel package ships landmark attention (upstream's Triton "
                           "kernel is not released as a package); use backend='auto' or 'ref'")
    _check(q, k, v, block_len)
    if backend == "auto" and k.shape[1] <= block_len:  # no landmark yet: plain causal softmax
        qh, kh, vh, scale = _prepare(q, k, v, scale)
        o = attention(qh, kh, vh, scale=scale)
        return rearrange(o, "b h t d -> b t h d").to(q.dtype)
    return landmark_attn_ref(q, k, v, block_len=block_len, scale=scale)


__all__ = [
    "is_landmark", "landmark_attn", "landmark_attn_quadratic_ref", "landmark_attn_recurrent_ref",
    "landmark_attn_ref", "landmark_retrieval_attn_ref", "landmark_retrieval_recurrent_ref",
]
