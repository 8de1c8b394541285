"""Landmark attention (Mohtashami & Jaggi, NeurIPS 2023): RoPE attention whose context is cut
into blocks, each summarised by a landmark token, so that a query reaches any earlier block
through that block's landmark.

    q_t = W_q x_t,  k_t = W_k x_t,  v_t = W_v x_t               (H heads of width Dh)
    every (block_len + 1)-th position is a landmark: (t + 1) mod (block_len + 1) = 0

Training mode (``retrieval_topk=None``): the grouped softmax over the whole context,

    q_t, k_t <- RoPE(q_t, t), RoPE(k_t, t)
    o_i = Σ_{j ≤ i, j in block c} π_i(j) v_j
        + Σ_{b < c} π_i(ℓ_b) Σ_{j in block b} softmax_{j ∈ b}(q_i·k_j / √Dh) v_j
    π_i = softmax over {ordinary tokens of block c up to i} ∪ {landmarks ℓ_b of blocks b < c}
    y_t = W_o concat_heads(o_t)

Retrieval mode (``retrieval_topk=k``): each query and head scores the cached landmarks, keeps
the k best blocks and applies the grouped softmax to them and its own block; positions are
handed out as upstream's memory cache does (``lrm.ops.landmark_attn``), so no RoPE distance
exceeds about (k + 2)·(block_len + 1) however long the cache. With k ≥ the number of earlier
blocks it equals training mode. This answers every query from its own block plus its top-k, as
in token-by-token decoding.

Chunked retrieval (``retrieval_topk=k, retrieval_chunk=C``, C ordinary tokens, a multiple of
block_len): upstream's long-input evaluation (``--mid_length``). The positions are cut into
chunks of C / block_len blocks; a query takes the grouped softmax over its own chunk (its block
and the chunk's earlier blocks through their landmarks), and top-k retrieval only into the
blocks before the chunk (the cache), in one outer softmax. ``retrieval_chunk=block_len`` is the
per-query retrieval above; a chunk longer than the input is training mode.

Which mode made which number in ``docs/claims/landmark.md``: its retrieval rows (top-2, top-4)
were measured per query (``retrieval_chunk=None``, the same as ``retrieval_chunk=block_len``);
its grouped-softmax rows in training mode over the whole test input.

Symbols: B batch, L length of this call, T tokens in the cache (landmarks included), d model
width, H heads, Dh = d / H (by default H = max(1, d/64): heads of 64, one head of width d below
d = 64), c the query's block, ℓ_b the landmark of block b, k = retrieval_topk,
C = retrieval_chunk.

The landmark tokens themselves are inputs: ``landmark_every = block_len`` tells ``LRModel`` to
insert a learned landmark embedding after every ``block_len`` real tokens (docs/design.md,
"Tokens inserted at the model level"). Used as a bare mixer, it treats those positions as
landmarks whatever they hold.

State: the KV cache of every position, landmarks included, with keys stored *before* RoPE
(retrieval re-positions them); the stream offset is the cache length T. Training mode rotates
the cache at its absolute positions at each call (O(T·d), the order of attention itself).

Simplifications against the paper: the cache is kept whole in memory (upstream can offload the
blocks to CPU memory); retrieval is per query and per head (upstream's default; it also offers
a max over heads or tokens); there is no flash kernel, the pure-PyTorch path is the only one.
Parameter names follow the q_proj/k_proj/v_proj/o_proj convention of ``attention``.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from einops import rearrange
from torch import nn

from lrm.dtypes import compute_dtype, upcast
from lrm.nn import rope
from lrm.ops.landmark_attn import landmark_attn, landmark_retrieval_attn_ref


class LandmarkState(NamedTuple):
    k: torch.Tensor  # (B, T, H, Dh), before RoPE
    v: torch.Tensor  # (B, T, H, Dh)


class LandmarkAttention(nn.Module):
    """Multi-head RoPE attention with landmark tokens (module docstring)."""

    default_mlp_ratio: ClassVar[float] = 4.0
    # landmark tokens summarise the block before them: a bidirectional model cannot use them
    # (LRModel refuses one; harnesses read this flag to build a causal model instead)
    causal_only: ClassVar[bool] = True

    def __init__(self, d: int, *, n_heads: int | None = None, block_len: int = 32,
                 retrieval_topk: int | None = None, retrieval_chunk: int | None = None,
                 rope_base: float = 10000.0, bias: bool = False) -> None:
        super().__init__()
        n_heads = n_heads or max(1, d // 64)
        if d % n_heads:
            raise ValueError(f"d={d} is not divisible by n_heads={n_heads}")
        if (d // n_heads) % 2:
            raise ValueError(f"RoPE needs an even head width; d / n_heads = {d // n_heads}")
        if not isinstance(block_len, int) or block_len < 1:
            raise ValueError(f"block_len must be a positive int, got {block_len!r}")
        if retrieval_topk is not None and (not isinstance(retrieval_topk, int)
                                           or retrieval_topk < 1):
            raise ValueError(f"retrieval_topk must be None (grouped softmax over the whole "
                             f"context) or a positive int, got {retrieval_topk!r}")
        if retrieval_chunk is not None and (
                retrieval_topk is None or not isinstance(retrieval_chunk, int)
                or retrieval_chunk < 1 or retrieval_chunk % block_len):
            raise ValueError(f"retrieval_chunk must be None or a positive multiple of "
                             f"block_len={block_len} (the chunk length in ordinary tokens), and "
                             f"it needs retrieval_topk; got retrieval_chunk={retrieval_chunk!r}, "
                             f"retrieval_topk={retrieval_topk!r}")
        self.d, self.n_heads, self.head_dim = d, n_heads, d // n_heads
        self.block_len, self.retrieval_topk, self.rope_base = block_len, retrieval_topk, rope_base
        self.retrieval_chunk = retrieval_chunk
        self.landmark_every = block_len  # read by LRModel: insert a landmark after each block
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, d, bias=bias)
        self.v_proj = nn.Linear(d, d, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)

    def forward(self, x: torch.Tensor, state: LandmarkState | None = None
                ) -> tuple[torch.Tensor, LandmarkState | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        offset = 0 if state is None else state.k.shape[1]
        q, k, v = (rearrange(p(x), "b l (h e) -> b l h e", h=self.n_heads)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        if state is not None:  # queries are the last L of the T + L keys
            k = torch.cat([state.k.to(k.dtype), k], dim=1)
            v = torch.cat([state.v.to(v.dtype), v], dim=1)
        dt = compute_dtype(q, k, v)
        qc, kc, vc = (upcast(t, dt) for t in (q, k, v))
        if self.retrieval_topk is None:
            T = kc.shape[1]
            pos = torch.arange(T, device=x.device)
            qr = rearrange(rope(rearrange(qc, "b l h e -> b h l e"), pos[offset:],
                                self.rope_base), "b h l e -> b l h e")
            kr = rearrange(rope(rearrange(kc, "b t h e -> b h t e"), pos, self.rope_base),
                           "b h t e -> b t h e")
            o = landmark_attn(qr, kr, vc, block_len=self.block_len)
        else:
            o = landmark_retrieval_attn_ref(qc, kc, vc, block_len=self.block_len,
                                            topk=self.retrieval_topk, rope_base=self.rope_base,
                                            chunk=self.retrieval_chunk)
        y = self.o_proj(rearrange(o, "b l h e -> b l (h e)").to(x.dtype))
        return y, (None if state is None else LandmarkState(k, v))

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> LandmarkState:
        empty = torch.zeros(batch_size, 0, self.n_heads, self.head_dim, device=device,
                            dtype=dtype or torch.float32)
        return LandmarkState(empty, empty.clone())

    def state_size(self, seq_len: int) -> int:
        return 2 * self.d * seq_len
