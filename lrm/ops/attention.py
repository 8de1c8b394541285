"""Causal softmax attention (Vaswani et al., 2017), with a KV cache, an optional sliding window
and optional persistent keys: the attention of the ``attention``, ``titans``, ``oryx`` and
``landmark`` mixers, and the visibility rule that ``forgetting_attn`` shares.

The queries are the last Lq of Lk positions (the first Lk − Lq keys are a cache), so query i
sits at absolute position p_i = Lk − Lq + i. Key j is visible to it when

    0 ≤ p_i − j            (causal: itself and the past)
    p_i − j < w            (sliding window of w keys, itself included; no window: w = ∞)

and the Np persistent keys/values (Titans' learned tokens) are visible to every query:

    s_ij = scale · q_i·k_j   for visible j,      s_ip = scale · q'_i·k^P_p   for every p
    o_i  = Σ_p softmax(s_i)_p v^P_p + Σ_j softmax(s_i)_j v_j        (one softmax over both)

q' is the query that meets the persistent keys: q itself, or ``q_persistent`` when the caller
rotates q and k by RoPE but the persistent keys carry no position (Titans: q'·k^P does not
depend on where the query is).

Symbols: B batch, H heads, Lq queries, Lk keys, D query/key width, Dv value width, Np persistent
tokens, w window, scale = 1/√D unless given. Layout (B, H, L, D), as PyTorch's SDPA.

Forms:
- ``attention_recurrent_ref``: one query at a time over the keys it may see (index ranges,
  not a mask): the oracle.
- ``attention_ref``: the plain form, one (Lq, Lk) score matrix under :func:`causal_mask`.
- ``attention(..., backend="auto")``: the dispatch. ``F.scaled_dot_product_attention`` (flash /
  memory-efficient kernels where PyTorch has them) serves the causal and cached cases; a window
  runs blockwise (blocks of w queries against 2w keys: O(Lq·w) scores, never Lq × Lk). No kernel
  package is involved: SDPA is PyTorch's own and serves every device, so ``backend="kernel"``
  equals ``auto``; ``backend="ref"`` (or ``LRM_BACKEND=ref``) runs ``attention_ref``.

Dtypes: the references compute in promote(input dtype, float32) (:mod:`lrm.dtypes`); the SDPA
path hands q, k, v over in their own dtype (its fused kernels keep the softmax statistics in
fp32). Every form returns q's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from lrm.dtypes import compute_dtype, upcast
from lrm.ops import _kernels

_NEG = float("-inf")


def causal_mask(n_q: int, n_k: int, *, q0: int | None = None, k0: int = 0,
                window: int | None = None, device=None) -> torch.Tensor:
    """(n_q, n_k) bool, True = visible: query i at absolute position q0 + i sees key j at
    k0 + j when 0 ≤ (q0 + i) − (k0 + j) < window (no window: any distance ≥ 0).

    ``q0`` defaults to k0 + n_k − n_q: the queries are the last n_q of the keys (a cache of
    n_k − n_q keys in front). The one statement of causality with a cache offset in lrm."""
    if q0 is None:
        q0 = k0 + n_k - n_q
    back = (torch.arange(q0, q0 + n_q, device=device)[:, None]
            - torch.arange(k0, k0 + n_k, device=device)[None, :])  # how far back key j is
    visible = back >= 0
    if window is not None:
        visible &= back < window
    return visible


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                     *, scale: float | None = None, k_persistent: torch.Tensor | None = None,
                     v_persistent: torch.Tensor | None = None,
                     q_persistent: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention under an explicit ``visible`` mask (broadcastable to (..., Lq, Lk)),
    with optional persistent keys seen by every query (through ``q_persistent``, default q).
    q (..., Lq, D), k (..., Lk, D), v (..., Lk, Dv), persistent (..., Np, D|Dv) -> (..., Lq, Dv)
    in q's dtype, computed in the compute dtype.

    The scores, the mask and the softmax meet here only: ``attention_ref`` calls it with
    :func:`causal_mask`, the windowed path once per block, and a caller whose keys are not one
    causal stream (Titans-MAC: memory tokens and inputs side by side) with its own mask."""
    dtype = compute_dtype(q, k, v, k_persistent)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qc, kc, vc = (upcast(t, dtype) for t in (q, k, v))
    s = (qc @ kc.transpose(-1, -2)).masked_fill(~visible, _NEG)
    if k_persistent is not None:
        qp = qc if q_persistent is None else upcast(q_persistent, dtype)
        s = torch.cat([qp @ upcast(k_persistent, dtype).transpose(-1, -2), s], -1)
        vc = torch.cat([upcast(v_persistent, dtype), vc], -2)
    return (torch.softmax(s * scale, -1) @ vc).to(q.dtype)


def _check(q, k, v, window, k_persistent, v_persistent, q_persistent) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("attention expects q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv); "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if k.shape != (B, H, Lk, D) or v.shape[:3] != (B, H, Lk):
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not 1 <= Lq <= Lk:
        raise ValueError(f"need 1 <= Lq <= Lk (the queries are the last Lq keys); got Lq={Lq}, "
                         f"Lk={Lk}")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None (no window) or a positive int, got {window!r}")
    if (k_persistent is None) != (v_persistent is None):
        raise ValueError("give both k_persistent and v_persistent, or neither")
    if k_persistent is not None:
        Np = k_persistent.shape[-2]
        if (k_persistent.shape != (B, H, Np, D)
                or v_persistent.shape != (B, H, Np, v.shape[-1])):
            raise ValueError(f"persistent keys/values must be (B, H, Np, D) and (B, H, Np, Dv): "
                             f"got {tuple(k_persistent.shape)}, {tuple(v_persistent.shape)} for "
                             f"q {tuple(q.shape)}, v {tuple(v.shape)}")
    if q_persistent is not None and q_persistent.shape != q.shape:
        raise ValueError(f"q_persistent must have q's shape {tuple(q.shape)}, got "
                         f"{tuple(q_persistent.shape)}")


# ----------------------------------------------------------------------------- references


def attention_recurrent_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                            scale: float | None = None, window: int | None = None,
                            k_persistent: torch.Tensor | None = None,
                            v_persistent: torch.Tensor | None = None,
                            q_persistent: torch.Tensor | None = None) -> torch.Tensor:
    """One query at a time: gather the keys it may see (an index range), softmax, sum. In the
    compute dtype; slow; the oracle."""
    _check(q, k, v, window, k_persistent, v_persistent, q_persistent)
    Lq, Lk = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = compute_dtype(q, k, v, k_persistent)
    qc, kc, vc, qp, kp, vp = (upcast(t, dtype) for t in (
        q, k, v, q if q_persistent is None else q_persistent, k_persistent, v_persistent))
    outs = []
    for i in range(Lq):
        p = Lk - Lq + i  # the query's absolute position
        lo = 0 if window is None else max(0, p - window + 1)
        s = torch.einsum("bhd,bhjd->bhj", qc[:, :, i], kc[:, :, lo:p + 1])
        vals = vc[:, :, lo:p + 1]
        if kp is not None:
            s = torch.cat([torch.einsum("bhd,bhjd->bhj", qp[:, :, i], kp), s], -1)
            vals = torch.cat([vp, vals], -2)
        outs.append(torch.einsum("bhj,bhjd->bhd", torch.softmax(s * scale, -1), vals))
    return torch.stack(outs, dim=2).to(q.dtype)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                  scale: float | None = None, window: int | None = None,
                  k_persistent: torch.Tensor | None = None,
                  v_persistent: torch.Tensor | None = None,
                  q_persistent: torch.Tensor | None = None) -> torch.Tensor:
    """The plain form: all (Lq, Lk) scores under :func:`causal_mask`, one softmax. q (B, H,
    Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> (B, H, Lq, Dv) in q's dtype."""
    _check(q, k, v, window, k_persistent, v_persistent, q_persistent)
    visible = causal_mask(q.shape[2], k.shape[2], window=window, device=q.device)
    return masked_attention(q, k, v, visible, scale=scale, k_persistent=k_persistent,
                            v_persistent=v_persistent, q_persistent=q_persistent)


# ----------------------------------------------------------------------------- fast paths


def _windowed(q, k, v, window, scale, kp, vp, qp) -> torch.Tensor:
    """Sliding-window attention, blockwise: blocks of w queries attend to the 2w keys that end
    at the block's last query (the w before the block and the block's own): O(Lq·w) scores."""
    B, H, Lq, _ = q.shape
    Lk, w = k.shape[2], window
    off = Lk - Lq
    nb = -(-Lq // w)
    # block b's queries are q[b·w : (b+1)·w], at key positions off + b·w + r; its keys are the
    # padded positions off + b·w .. off + b·w + 2w − 1 (original position = padded − w)
    pad_end = nb * w + w - (Lk - off)
    kw, vw = (F.pad(t, (0, 0, w, pad_end))[:, :, off:off + (nb + 1) * w].unfold(2, 2 * w, w)
              for t in (k, v))  # (B, H, nb, E, 2w)
    kw, vw = (rearrange(t, "b h n e c -> b h n c e") for t in (kw, vw))
    qb = rearrange(F.pad(q, (0, 0, 0, nb * w - Lq)), "b h (n r) e -> b h n r e", r=w)
    # query r of a block sits at w + r in its 2w keys; in every block the same band
    band = causal_mask(w, 2 * w, q0=w, window=w, device=q.device)
    start = off + torch.arange(nb, device=q.device) * w  # padded index of each block's keys
    c = torch.arange(2 * w, device=q.device)
    mask = band & ((start[:, None] + c[None, :]) >= w)[:, None, :]  # (nb, w, 2w): no left pad
    if kp is not None:
        kp, vp = (t[:, :, None].expand(B, H, nb, *t.shape[2:]) for t in (kp, vp))
        if qp is not None:
            qp = rearrange(F.pad(qp, (0, 0, 0, nb * w - Lq)), "b h (n r) e -> b h n r e", r=w)
    o = masked_attention(qb, kw, vw, mask, scale=scale, k_persistent=kp, v_persistent=vp,
                         q_persistent=qp)
    return rearrange(o, "b h n r e -> b h (n r) e")[:, :, :Lq]


def _sdpa(q, k, v, scale, kp, vp) -> torch.Tensor:
    """PyTorch's fused attention: ``is_causal`` without a cache, no mask for one query (it sees
    every key), else the boolean :func:`causal_mask`."""
    Lq, Lk, D = q.shape[2], k.shape[2], q.shape[-1]
    if kp is not None:
        k, v = torch.cat([kp.to(k.dtype), k], 2), torch.cat([vp.to(v.dtype), v], 2)
    mask = None
    if Lq > 1 and (Lq != Lk or kp is not None):
        mask = causal_mask(Lq, Lk, device=q.device)
        if kp is not None:  # persistent keys: visible to every query
            mask = F.pad(mask, (kp.shape[2], 0), value=True)
    causal = Lq > 1 and mask is None
    # PyTorch's fused (flash) SDPA needs the value width to equal the key width; otherwise it
    # takes its math path (5x slower and O(Lq·Lk) memory on a CPU). The attention weights do
    # not depend on v, so attend to each D-wide slice of v.
    v_parts = v.split(D, dim=-1) if v.shape[-1] % D == 0 else (v,)
    return torch.cat([F.scaled_dot_product_attention(q, k, vp_, attn_mask=mask,
                                                     is_causal=causal, scale=scale)
                      for vp_ in v_parts], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              window: int | None = None, k_persistent: torch.Tensor | None = None,
              v_persistent: torch.Tensor | None = None, q_persistent: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Causal softmax attention, the dispatch point; the contract of :func:`attention_ref`.

    A window runs blockwise (O(Lq·w) memory); a q_persistent without a window runs the plain
    form (no fused kernel takes two query sets); everything else runs on
    ``F.scaled_dot_product_attention``. ``backend="ref"`` (or ``LRM_BACKEND=ref``) runs
    :func:`attention_ref`."""
    _check(q, k, v, window, k_persistent, v_persistent, q_persistent)
    kw = dict(scale=scale, window=window, k_persistent=k_persistent, v_persistent=v_persistent,
              q_persistent=q_persistent)
    if _kernels.resolve_backend(backend) == "ref":
        return attention_ref(q, k, v, **kw)
    if window is not None:
        return _windowed(q, k, v, window, scale, k_persistent, v_persistent, q_persistent)
    if q_persistent is not None and k_persistent is not None:
        return attention_ref(q, k, v, **kw)
    return _sdpa(q, k, v, scale, k_persistent, v_persistent)


__all__ = ["attention", "attention_recurrent_ref", "attention_ref", "causal_mask",
           "masked_attention"]
