"""Causal multi-head softmax attention (Vaswani et al., 2017), the baseline of every table.

    q_t = W_q x_t,  k_t = W_k x_t,  v_t = W_v x_t          (split into H heads of size Dh)
    q_t, k_t <- RoPE(q_t, t), RoPE(k_t, t)                   (optional, Su et al., 2021)
    o_t = Σ_{j≤t} softmax_j(q_t·k_j / √Dh) v_j
    y_t = W_o concat_heads(o_t)

Symbols: B batch, L length of this call, T tokens already in the cache, d model width,
H heads, Dh = d / H head width.

Default H = max(1, d/64): heads of Dh = 64 (the base model of Vaswani et al., d = 512 with 8
heads) from d = 64 on, one head of width d below. H changes neither the parameter count (4 d²)
nor the state, so it needs no other rule at small d.

The attention is the op :func:`lrm.ops.attention.attention` (PyTorch's
``scaled_dot_product_attention``: flash/memory-efficient kernels where PyTorch has them). The
state is the KV cache: streaming and decoding append to it and attend over cache + new tokens,
so state_size grows linearly with the tokens seen.
Parameter names follow the common q_proj/k_proj/v_proj/o_proj convention.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from einops import rearrange
from torch import nn

from lrm.nn import rope
from lrm.ops.attention import attention


class AttentionState(NamedTuple):
    k: torch.Tensor  # (B, H, T, Dh), after RoPE
    v: torch.Tensor  # (B, H, T, Dh)


class Attention(nn.Module):
    """Causal multi-head attention with optional RoPE and a KV-cache state."""

    default_mlp_ratio: ClassVar[float] = 4.0

    def __init__(self, d: int, *, n_heads: int | None = None, rope: bool = True,
                 rope_base: float = 10000.0, bias: bool = False) -> None:
        super().__init__()
        n_heads = n_heads or max(1, d // 64)
        if d % n_heads:
            raise ValueError(f"d={d} is not divisible by n_heads={n_heads}")
        self.d, self.n_heads, self.head_dim = d, n_heads, d // n_heads
        self.rope, self.rope_base = rope, rope_base
        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = nn.Linear(d, d, bias=bias)
        self.v_proj = nn.Linear(d, d, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)

    def forward(self, x: torch.Tensor, state: AttentionState | None = None
                ) -> tuple[torch.Tensor, AttentionState | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        offset = 0 if state is None else state.k.shape[2]
        q, k, v = (rearrange(p(x), "b l (h e) -> b h l e", h=self.n_heads)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope:
            pos = torch.arange(offset, offset + x.shape[1], device=x.device)
            q = rope(q, pos, self.rope_base)
            k = rope(k, pos, self.rope_base)
        if state is not None:  # the queries are the last L of the T + L keys
            k = torch.cat([state.k.to(k.dtype), k], dim=2)  # (B, H, T+L, Dh)
            v = torch.cat([state.v.to(v.dtype), v], dim=2)
        o = attention(q, k, v)
        y = self.o_proj(rearrange(o, "b h l e -> b l (h e)"))
        return y, (None if state is None else AttentionState(k, v))

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> AttentionState:
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device,
                            dtype=dtype or torch.float32)
        return AttentionState(empty, empty.clone())

    def state_size(self, seq_len: int) -> int:
        return 2 * self.n_heads * self.head_dim * seq_len
