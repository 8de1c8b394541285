"""Forgetting Transformer (FoX; Lin, Nikishin, He, Courville, ICLR 2025): softmax attention with
a data-dependent forget gate, and the "Pro" block.

    q_t = W_q x_t,   k_t = W_k x_t,   v_t = W_v x_t                      (H heads of width Dh)
    f_t = σ(w_fᵀ x_t + b_f)                           one forget gate per head, b_f = 0 at init
    o_i = Σ_{j≤i} softmax_j(q_i·k_j / √Dh + Σ_{l=j+1..i} log f_l) v_j
    y_t = W_o o_t

No positional embedding: the decay bias Σ log f_l grows with the distance i − j, so it carries
the relative position (and the model learns how fast each head forgets, per token).

The Pro block (``pro=True``, the paper's best model, our default) adds four components, each of
which can be switched off on its own (an option left at None follows ``pro``):

- ``k_shift``/``v_shift``, data-dependent token shift ("KV-shift"), per head:
      k̃_t = α_t k_{t−1} + (1 − α_t) k_t,  α_t = σ(w_αᵀ x_t)  (no bias; k_{−1} = 0)
  and likewise for v with its own w_α. k_{t−1} is the previous token's raw projection.
- ``qk_norm``: RMSNorm of q and k per head (after the shift), with per-head scales.
- ``output_norm``: RMSNorm of o per head before the output projection.
- ``output_gate``: o ← o ⊙ σ(W_g x), applied after the output norm.

    pro:  k̃, ṽ = shift(k), shift(v);  q, k̃ = RMSNorm_h(q), RMSNorm_h(k̃)
          y = W_o (RMSNorm_h(o) ⊙ σ(W_g x))

Symbols: B batch, L length of this call, T tokens already in the cache, d model width, H heads,
Dh = d / H head width (64 by default, as in the paper's models: H = max(1, d/64), one head of
width d below d = 64; H changes neither the parameter count nor the state), x the mixer's input.

Faithful to the authors' code (zhixuan-lin/forgetting-transformer, ``ForgettingAttentionLayer``):
parameter names (q_proj, k_proj.linear, k_proj.shift_proj, v_proj..., fgate_proj, ogate_proj,
q_norm, k_norm, output_norm, o_proj), the order norm-then-gate, the shift on the raw projection
before QK-norm, per-head QK-norm scales (their ``qk_norm_share_param_across_head=False``), eps
1e-5 for QK-norm and 1e-6 for the output norm, b_f = 0 (their data-dependent gate uses the
default zero bias; the T_min/T_max bias init of the paper applies to its data-*independent*
gate ablations only). ``fgate_bias_init`` (default 0) sets another b_f: at b_f = 0 every
head starts out forgetting half of its past per token, and on a small synthetic recall task
trained from scratch the gradient towards remembering vanishes (see docs/claims/fox.md; b_f = 3,
f ≈ 0.95, learns it). Simplified: projections keep PyTorch's default init (the authors use
N(0, 0.02) everywhere), like every mixer in lrm; no GQA, no RoPE option, no adaptive computation
pruning; the Pro models of the paper shrink the MLP to ratio 3.5 to pay for the output gate,
our ``default_mlp_ratio`` stays 4.

State: the KV cache (k after shift and QK-norm, v after shift), log f of every cached token
(the running c = cumsum(log f) is re-summed from it in fp64 at each call; storing c itself would
lose the small recent decays in fp32 once |c| is large), and for the KV-shift the previous
token's raw k and v projections.

Kernel: ``lrm.ops.forgetting_attn.forgetting_attn`` dispatches the full sequence on CUDA to
flash-linear-attention's ``parallel_forgetting_attn``; elsewhere, and with a cache, it runs the
blockwise pure-PyTorch reference (O(L) memory, never an L×L matrix).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lrm.dtypes import compute_dtype, promote, upcast
from lrm.nn import RMSNorm
from lrm.ops.forgetting_attn import forgetting_attn


class FoXState(NamedTuple):
    k: torch.Tensor  # (B, T, H, Dh), after the shift and QK-norm
    v: torch.Tensor  # (B, T, H, Dh), after the shift
    log_fgate: torch.Tensor  # (B, T, H), compute dtype (fp32/fp64): log f of every cached token
    k_prev: torch.Tensor | None  # (B, H·Dh), raw k projection of the last token (k_shift)
    v_prev: torch.Tensor | None  # (B, H·Dh), raw v projection of the last token (v_shift)


class ShiftLinear(nn.Module):
    """A projection followed by the data-dependent token shift of FoX (Pro), per head:

        out_t = α_t · z_{t−1} + (1 − α_t) · z_t,   z = W x,   α_t = σ(w_αᵀ x_t) ∈ (0, 1)^H

    ``prev`` is z of the token before this chunk (zeros at the start). Returns the shifted
    output and the new ``prev`` (z of the last token)."""

    def __init__(self, d_in: int, d_out: int, n_heads: int, *, bias: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.linear = nn.Linear(d_in, d_out, bias=bias)
        self.shift_proj = nn.Linear(d_in, n_heads, bias=False)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.linear(x)  # (B, L, d_out)
        if prev is None:
            prev = z.new_zeros(z.shape[0], z.shape[-1])
        z_prev = torch.cat([prev[:, None].to(z.dtype), z[:, :-1]], dim=1)  # z_{t-1}
        dtype = compute_dtype(z)
        alpha = torch.sigmoid(upcast(self.shift_proj(x), dtype))[..., None]  # (B, L, H, 1)
        zh, zh_prev = (rearrange(upcast(t, dtype), "b l (h e) -> b l h e", h=self.n_heads)
                       for t in (z, z_prev))
        out = alpha * zh_prev + (1 - alpha) * zh
        return rearrange(out, "b l h e -> b l (h e)").to(z.dtype), z[:, -1]


class ForgettingAttention(nn.Module):
    """FoX attention mixer (see the module docstring); ``pro=False`` is the plain FoX layer."""

    default_mlp_ratio: ClassVar[float] = 4.0

    def __init__(self, d: int, *, n_heads: int | None = None, pro: bool = True,
                 output_gate: bool | None = None, qk_norm: bool | None = None,
                 output_norm: bool | None = None, k_shift: bool | None = None,
                 v_shift: bool | None = None, fgate_bias_init: float = 0.0,
                 bias: bool = False) -> None:
        super().__init__()
        n_heads = n_heads or max(1, d // 64)
        if d % n_heads:
            raise ValueError(f"d={d} is not divisible by n_heads={n_heads}")
        self.d, self.n_heads, self.head_dim = d, n_heads, d // n_heads

        def on(flag: bool | None) -> bool:  # None: follow ``pro``
            return pro if flag is None else bool(flag)

        self.pro = pro
        self.use_output_gate, self.use_qk_norm = on(output_gate), on(qk_norm)
        self.use_output_norm, self.k_shift, self.v_shift = on(output_norm), on(k_shift), on(v_shift)

        self.q_proj = nn.Linear(d, d, bias=bias)
        self.k_proj = ShiftLinear(d, d, n_heads, bias=bias) if self.k_shift else nn.Linear(
            d, d, bias=bias)
        self.v_proj = ShiftLinear(d, d, n_heads, bias=bias) if self.v_shift else nn.Linear(
            d, d, bias=bias)
        self.o_proj = nn.Linear(d, d, bias=bias)
        self.fgate_proj = nn.Linear(d, n_heads, bias=True)
        # b_f = 0 as upstream: f = σ(wᵀx) is about 0.5 at init, so every head starts out local
        # and must learn to remember; b_f > 0 starts with memory of ~1/(1 - σ(b_f)) tokens
        nn.init.constant_(self.fgate_proj.bias, fgate_bias_init)
        self.ogate_proj = nn.Linear(d, d, bias=False) if self.use_output_gate else None
        # per-head RMSNorms with a scale per channel (upstream: not shared across heads)
        per_head = dict(group_size=self.head_dim)
        self.q_norm = RMSNorm(d, 1e-5, **per_head) if self.use_qk_norm else None
        self.k_norm = RMSNorm(d, 1e-5, **per_head) if self.use_qk_norm else None
        self.output_norm = RMSNorm(d, 1e-6, **per_head) if self.use_output_norm else None

    def forward(self, x: torch.Tensor, state: FoXState | None = None
                ) -> tuple[torch.Tensor, FoXState | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        q = self.q_proj(x)
        k_prev = v_prev = None
        if self.k_shift:
            k, k_prev = self.k_proj(x, None if state is None else state.k_prev)
        else:
            k = self.k_proj(x)
        if self.v_shift:
            v, v_prev = self.v_proj(x, None if state is None else state.v_prev)
        else:
            v = self.v_proj(x)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (rearrange(t, "b l (h e) -> b l h e", h=self.n_heads) for t in (q, k, v))
        dtype = compute_dtype(x)
        log_f = F.logsigmoid(upcast(self.fgate_proj(x), dtype))  # (B, L, H), log f_t < 0

        if state is not None:  # queries are the last L of the T + L keys
            k = torch.cat([state.k.to(k.dtype), k], dim=1)
            v = torch.cat([state.v.to(v.dtype), v], dim=1)
            log_f = torch.cat([upcast(state.log_fgate, dtype), log_f], dim=1)
        o = forgetting_attn(q, k, v, log_f)  # (B, L, H, Dh)
        o = rearrange(o, "b l h e -> b l (h e)")

        if self.use_output_norm:
            o = self.output_norm(o)
        if self.use_output_gate:
            o = o * torch.sigmoid(self.ogate_proj(x))
        y = self.o_proj(o)
        if state is None:
            return y, None
        return y, FoXState(k, v, log_f, k_prev, v_prev)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> FoXState:
        dtype = dtype or torch.float32
        H, Dh = self.n_heads, self.head_dim
        empty = torch.zeros(batch_size, 0, H, Dh, device=device, dtype=dtype)
        prev = torch.zeros(batch_size, self.d, device=device, dtype=dtype)
        return FoXState(
            empty, empty.clone(),
            torch.zeros(batch_size, 0, H, device=device, dtype=promote(dtype)),
            prev if self.k_shift else None, prev.clone() if self.v_shift else None)

    def state_size(self, seq_len: int) -> int:
        per_token = 2 * self.d + self.n_heads  # k, v and log f
        return per_token * seq_len + self.d * (int(self.k_shift) + int(self.v_shift))
