"""Titans (Behrouz, Zhong & Mirrokni, 2025): attention plus a neural long-term memory that learns
at test time, in the paper's three arrangements MAC, MAG and MAL, and the memory alone (LMM).

The long-term memory (LMM, the paper's §3; the math is :mod:`lrm.ops.neural_memory`), per head:

    q_t, k_t, v_t = SiLU(conv(W_Q x), conv(W_K x), conv(W_V x))_t,   q_t, k_t ← q_t/‖q_t‖, k_t/‖k_t‖
    θ_t = θ_max σ(w_θᵀ x_t + b_θ),   η_t = σ(w_ηᵀ x_t + b_η),   α_t = σ(w_αᵀ x_t + b_α)
    S_t = η_t S_{t−1} − θ_t 𝒯(∇ℓ(W; k_t, v_t)),   ℓ = ‖M_W(k_t) − v_t‖²
    W_t = (1 − α_t) W_{t−1} + S_t
    𝒯(G) = G · tanh(n/c)/(n/c),  n = ‖G‖_F, per weight matrix    (soft clamp; see below)
    o_t = M_{W_t}(q_t)                                     (gradients at each chunk's start)
    LMM(x)_t = W_O (RMSNorm_h(o_t) ⊙ SiLU(W_G x_t))        normalisation and a gate before W_O

Persistent memory: N_p learned tokens P ∈ ℝ^{N_p×d}, data-independent, put in front of the
attention's keys and values; every query sees them (they never leave a sliding window).

    MAG (memory as a gate, Eq. 26–28):  y = SWA([P ‖ x]),  m = LMM(x),  o = N_y(y) ⊙ σ(N_m(m))
    MAL (memory as a layer, Eq. 29–31): o = SWA([P ‖ LMM(x)])
    MAC (memory as context, Eq. 21–25), segment by segment (S tokens, s = the segment):
        1. h = W_h M_{W_s}(q̂),  q̂ = L2(SiLU(W_Q x_s)): read the memory as it stood at the
           segment's start, no update;
        2. y = Attn([P ‖ h ‖ x_s]) over the segment: query i sees P, h_j and x_j for j ≤ i;
        3. the memory is updated with y (keys and values from y): m = LMM(N(y));
        4. o = N_y(y) ⊙ σ(N_m(m)).
    LMM: o = LMM(x), the memory alone (the paper's ablation).
    SWA: o = SWA([P ‖ x]), the attention alone (no long-term memory), for comparisons.

SWA is causal sliding-window attention: the query at t sees the keys t−w+1..t (w of them) and
the persistent tokens. RoPE on the ordinary tokens (relative positions; persistent tokens are
not rotated). N_y, N_m, N are RMSNorms with learned scales; N (MAC only) is not in the paper's
equations: without it the memory of a second MAC layer, fed raw attention outputs, diverged at
initialisation on MQAR (its step sizes scale with its values).

Symbols: B batch, L tokens of this call, d width, H memory heads, K = head_dim (query, key
and value width of a memory head), F = expansion · K (hidden width of the depth-2 memory),
C memory chunk size, c = max_grad_norm (the soft cap on a token's gradient norm), 𝒯 the
transform of each token's gradient matrix G (𝒯(G) = G without stabilisers), w window,
S segment length (MAC), N_p persistent tokens, Ha attention heads of width d/Ha.

Default sizes [lrm's choice]: memory heads of K = min(32, d/4), i.e.
K = 32 from d = 128 on and 4 heads below, H = d/K, so that the memory's weights (H·2K·F floats
at depth 2) grow like d·K and not faster; Ha = max(1, d/64), attention heads of 64 (one head of
width d below d = 64).

Choices where the paper is silent, and simplifications:
- causality inside a MAC segment: the paper attends over [P ‖ h ‖ x_s]; h_j is read with a
  query from x_j, so letting query i see h_j for j > i would leak the future. Query i sees h_j
  and x_j for j ≤ i. Step 3's memory update, read by step 4, is causal by construction: token i
  reads the memory after its own update (see the op's docstring).
- the persistent tokens enter the attention only; the paper also passes them through the memory
  (M(x̃)), which would only give the memory a learned, data-independent starting state: here
  the memory's initial weights are learned parameters instead, which covers it.
- the memory's hidden activation is GELU (as titans-pytorch); the memory is the paper's bare
  MLP by default, with no residual and no LayerNorm. titans-pytorch wraps it by default in
  TTT's LayerNorm + residual, M̃(x) = LN(M(x)) + x: ``memory_norm_residual=True`` does the same
  (without LN's learned scale; see :mod:`lrm.ops.neural_memory`), in the loss, the update and
  every read, MAC's segment read included.
- θ_max = 0.02 by default: inside a chunk all C gradients are taken at the same weights, so
  when the chunk's keys are alike (attention outputs in MAC are) the chunk's step is up to C
  times a single token's; with θ_max = 0.1 a 2-layer MAC model diverged at initialisation on
  1024-token MQAR inputs, with 0.02 none of MAC, MAG, LMM did (2 seeds each).
- a bounded inner step (a documented deviation, on by default): the paper's update has no
  bound, and on MQAR (d = 32, L = 128, 16 pairs) the loss went NaN at outer learning rates 3e-3
  and 1e-3: in one MAC segment the keys of a chunk were nearly parallel (mean cosine 0.89),
  all the chunk's gradients were taken at its start, momentum was 0.67, and the depth-2
  memory's curvature grows with ‖W₂‖², so each chunk overshot further and ‖W‖ went from 5 to
  904 in nine chunks. titans-pytorch offers ``max_grad_norm`` (a tanh-shaped rescaling of each
  chunk's θ-weighted gradient to a norm in (c/2, c), off by default) and
  ``spectral_norm_surprises`` (Newton–Schulz on the momentum, off by default); see
  :mod:`lrm.ops.neural_memory` for how lrm's options differ. lrm defaults to the soft clamp
  ``max_grad_norm = 3``: each token's gradient matrix G keeps its direction and gets the norm
  3 tanh(‖G‖/3) < 3, so a token moves the memory by at most θ_max · 3 and the geometric growth
  is gone, while the gradients of an initialised memory are barely touched (on MQAR at
  d = 32, ‖G‖ is 0.5–1.8 for the 10th–99th percentile of tokens: factors 0.99–0.89).
  ``normalize_surprise=True`` (five Newton–Schulz steps, a surprise of norm ≈ 0.7 whatever its
  size) is the stronger option; ``max_grad_norm=None`` with it off is the paper's rule.
- MAG/MAL use one sliding-window attention inside the mixer; the paper's MAL stacks a memory
  layer and an attention layer as separate blocks (each with its own residual and MLP).

Streaming: the state holds the memory (weights and momentum at the unfinished chunk's start,
and that chunk's tokens), the short-conv tails, the attention cache (the last w − 1 tokens for
SWA; the current segment's x and h keys/values for MAC) and for MAC the memory weights at the
segment's start. A stream cut anywhere, also inside a MAC segment, equals a single call.
"""

from __future__ import annotations

import itertools
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lrm.dtypes import compute_dtype, upcast
from lrm.nn import RMSNorm, ShortConv, l2norm, rope
from lrm.ops.attention import attention, causal_mask, masked_attention
from lrm.ops.neural_memory import (
    ACTIVATIONS,
    NeuralMemoryState,
    initial_state,
    memory_forward,
    neural_memory,
)

VARIANTS = ("mac", "mag", "mal", "lmm", "swa")


class TitansState(NamedTuple):
    memory: NeuralMemoryState | None  # the long-term memory (None for "swa")
    conv: torch.Tensor | None  # (B, 3·H·K, W−1): the last inputs of the q/k/v short convs
    attn_k: torch.Tensor | None  # (B, Ha, T, d/Ha) keys before RoPE: SWA's last ≤ w−1 tokens,
    attn_v: torch.Tensor | None  # or MAC's tokens of the current segment; values likewise
    h_k: torch.Tensor | None  # MAC: keys of the memory tokens h of the current segment
    h_v: torch.Tensor | None  # MAC: their values
    segment_weights: tuple[torch.Tensor, ...] | None  # MAC: the memory at the segment's start


class _LongTermMemory(nn.Module):
    """The LMM branch: projections, short convs, gates, the neural memory and its output."""

    def __init__(self, d: int, n_heads: int, head_dim: int, *, depth: int, expansion: float,
                 chunk_size: int, activation: str, d_conv: int, theta_max: float,
                 max_grad_norm: float | None, normalize_surprise: bool,
                 norm_residual: bool) -> None:
        super().__init__()
        H, K = n_heads, head_dim
        self.norm_residual = norm_residual
        self.n_heads, self.head_dim, self.chunk_size = H, K, chunk_size
        self.activation, self.theta_max = activation, theta_max
        self.max_grad_norm, self.normalize_surprise = max_grad_norm, normalize_surprise
        self.to_queries = nn.Linear(d, H * K, bias=False)
        self.to_keys = nn.Linear(d, H * K, bias=False)
        self.to_values = nn.Linear(d, H * K, bias=False)
        self.conv = ShortConv(3 * H * K, d_conv, activation="silu") if d_conv else None
        self.to_adaptive_step = nn.Linear(d, H)  # θ
        self.to_momentum = nn.Linear(d, H)  # η
        self.to_decay_factor = nn.Linear(d, H)  # α
        # b_α = −5: α ≈ 0.007 at init, a memory horizon of ~150 tokens to begin with
        nn.init.constant_(self.to_decay_factor.bias, -5.0)
        nn.init.zeros_(self.to_momentum.bias)
        nn.init.zeros_(self.to_adaptive_step.bias)
        hidden = max(1, round(expansion * K))
        dims = [K, K] if depth == 1 else [K, hidden, K]
        self.memory_model_parameters = nn.ParameterList()
        for d_in, d_out in itertools.pairwise(dims):  # the learned initial W₀
            w = torch.empty(H, d_in, d_out)
            for h in range(H):
                nn.init.xavier_uniform_(w[h])
            self.memory_model_parameters.append(nn.Parameter(w))
        self.o_norm = RMSNorm(H * K, 1e-6, group_size=K)
        self.g_proj = nn.Linear(d, H * K, bias=False)
        self.o_proj = nn.Linear(H * K, d, bias=False)

    def memory_size(self) -> int:
        return sum(p.numel() for p in self.memory_model_parameters)

    def initial_memory(self, batch_size: int, dtype: torch.dtype) -> NeuralMemoryState:
        return initial_state(list(self.memory_model_parameters), batch_size,
                             dtype=compute_dtype(torch.empty(0, dtype=dtype),
                                                 *self.memory_model_parameters))

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Read-only queries without the conv (MAC's step 1): (B, L, H, K)."""
        q = rearrange(F.silu(self.to_queries(x)), "b l (h k) -> b l h k", h=self.n_heads)
        return l2norm(q)

    def forward(self, x: torch.Tensor, memory: NeuralMemoryState,
                conv_state: torch.Tensor | None
                ) -> tuple[torch.Tensor, NeuralMemoryState, torch.Tensor | None]:
        qkv = torch.cat([self.to_queries(x), self.to_keys(x), self.to_values(x)], -1)
        if self.conv is not None:
            qkv, conv_state = self.conv(qkv, conv_state)  # SiLU inside
        else:
            qkv = F.silu(qkv)
        q, k, v = (rearrange(t, "b l (h k) -> b l h k", h=self.n_heads)
                   for t in qkv.chunk(3, dim=-1))
        q, k = l2norm(q), l2norm(k)
        dtype = compute_dtype(x)
        gates = [upcast(p(x), dtype) for p in (self.to_adaptive_step, self.to_momentum,
                                               self.to_decay_factor)]
        theta = self.theta_max * torch.sigmoid(gates[0])
        eta, alpha = torch.sigmoid(gates[1]), torch.sigmoid(gates[2])
        o, memory = neural_memory(q, k, v, theta, eta, alpha, memory,
                                  chunk_size=self.chunk_size, activation=self.activation,
                                  max_grad_norm=self.max_grad_norm,
                                  normalize_surprise=self.normalize_surprise,
                                  norm_residual=self.norm_residual)
        o = self.o_norm(rearrange(o, "b l h k -> b l (h k)")) * F.silu(self.g_proj(x))
        return self.o_proj(o.to(x.dtype)), memory, conv_state


class Titans(nn.Module):
    """Titans mixer: ``variant`` "mac", "mag", "mal" or "lmm" (see the module docstring)."""

    default_mlp_ratio: ClassVar[float] = 4.0

    def __init__(self, d: int, *, variant: str = "mac", n_heads: int | None = None,
                 head_dim: int | None = None, depth: int = 2, expansion: float = 2.0,
                 chunk_size: int = 16, activation: str = "gelu", theta_max: float = 0.02,
                 d_conv: int = 4, window: int = 64, segment_len: int = 64,
                 n_persistent: int = 4, attn_heads: int | None = None,
                 max_grad_norm: float | None = 3.0, normalize_surprise: bool = False,
                 memory_norm_residual: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if depth not in (1, 2):
            raise ValueError(f"the memory's depth must be 1 (linear) or 2 (MLP), got {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if head_dim is None:  # 32 from d = 128 on, d/4 below (module docstring)
            head_dim = max(1, min(32, d // 4))
        n_heads = n_heads or max(1, d // head_dim)
        attn_heads = attn_heads or max(1, d // 64)
        if d % attn_heads:
            raise ValueError(f"d={d} is not divisible by attn_heads={attn_heads}")
        if min(chunk_size, window, segment_len) < 1 or n_persistent < 0:
            raise ValueError("chunk_size, window and segment_len must be >= 1 and n_persistent "
                             f">= 0; got {chunk_size}, {window}, {segment_len}, {n_persistent}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm is the soft cap on each token's gradient norm in the "
                             f"memory's update and must be > 0, or None for the paper's unbounded "
                             f"step; got {max_grad_norm}")
        if variant == "mac" and segment_len % chunk_size:
            raise ValueError(f"MAC reads the memory at each segment's start, which must be a "
                             f"chunk boundary: segment_len={segment_len} must be a multiple of "
                             f"chunk_size={chunk_size}")
        self.d, self.variant, self.window, self.segment_len = d, variant, window, segment_len
        self.n_persistent, self.attn_heads = n_persistent, attn_heads
        self.memory = _LongTermMemory(
            d, n_heads, head_dim, depth=depth, expansion=expansion, chunk_size=chunk_size,
            activation=activation, d_conv=d_conv, theta_max=theta_max,
            max_grad_norm=max_grad_norm, normalize_surprise=normalize_surprise,
            norm_residual=memory_norm_residual,
        ) if variant != "swa" else None
        if variant != "lmm":
            self.q_proj = nn.Linear(d, d, bias=False)
            self.k_proj = nn.Linear(d, d, bias=False)
            self.v_proj = nn.Linear(d, d, bias=False)
            self.o_proj = nn.Linear(d, d, bias=False)
            self.persistent = nn.Parameter(torch.randn(n_persistent, d) * d ** -0.5)
        if variant in ("mac", "mag"):  # o = N_y(y) ⊙ σ(N_m(m))
            self.norm_y, self.norm_m = RMSNorm(d, 1e-6), RMSNorm(d, 1e-6)
        if variant == "mac":  # memory read (H·K) -> the tokens h (d)
            self.h_proj = nn.Linear(n_heads * head_dim, d, bias=False)
            # the memory learns from y, which no block norm has seen: an RMSNorm keeps its
            # values (and so the size of its gradient steps) at the scale x has in MAG and MAL
            self.norm_mem_in = RMSNorm(d, 1e-6)

    # ------------------------------------------------------------------ attention parts

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return rearrange(t, "b l (h e) -> b h l e", h=self.attn_heads)

    def _persistent_kv(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.persistent.to(like.dtype)[None]  # (1, Np, d)
        kp, vp = (self._heads(proj(p)).expand(like.shape[0], -1, -1, -1)
                  for proj in (self.k_proj, self.v_proj))
        return kp, vp

    def _swa(self, x: torch.Tensor, cache_k: torch.Tensor | None, cache_v: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        q, k, v = (self._heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        if cache_k is not None:
            k, v = torch.cat([cache_k.to(k.dtype), k], 2), torch.cat([cache_v.to(v.dtype), v], 2)
        Tk, L = k.shape[2], q.shape[2]
        # RoPE by position in [cache ‖ new]: only differences matter, so no absolute count;
        # the persistent keys carry no position and meet the unrotated q
        pos = torch.arange(Tk, device=x.device)
        kp, vp = self._persistent_kv(x)
        o = attention(rope(q, pos[Tk - L:]), rope(k, pos), v, window=self.window,
                      k_persistent=kp, v_persistent=vp, q_persistent=q)
        keep = max(0, min(Tk, self.window - 1))  # the next token sees w − 1 of these
        new_k, new_v = k[:, :, Tk - keep:], v[:, :, Tk - keep:]
        return self.o_proj(rearrange(o, "b h l e -> b l (h e)").to(x.dtype)), new_k, new_v

    def _gate(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.norm_y(y) * torch.sigmoid(self.norm_m(m))

    # ------------------------------------------------------------------ MAC

    def _mac_piece(self, x: torch.Tensor, s: TitansState) -> tuple[torch.Tensor, TitansState]:
        """Tokens of one segment (the segment's positions s0..s0+L−1, s0 = the cache length)."""
        s0 = s.attn_k.shape[2]
        seg_w = s.segment_weights
        if s0 == 0:  # a new segment starts: read the memory as it stands now
            if s.memory.k.shape[1]:
                raise RuntimeError("a MAC segment must start on a memory chunk boundary")
            seg_w = s.memory.weights
        # 1. h = W_h M_{W_s}(q̂): the memory at the segment's start, read without an update
        read = memory_forward(seg_w, self.memory.queries(x), activation=self.memory.activation,
                              norm_residual=self.memory.norm_residual)
        h = self.h_proj(rearrange(read, "b l h k -> b l (h k)").to(x.dtype))
        # 2. attention over [P ‖ h ‖ x] of this segment, causal over h and x
        q, k, v = (self._heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        hk, hv = self._heads(self.k_proj(h)), self._heads(self.v_proj(h))
        k, v = torch.cat([s.attn_k.to(k.dtype), k], 2), torch.cat([s.attn_v.to(v.dtype), v], 2)
        hk, hv = torch.cat([s.h_k.to(hk.dtype), hk], 2), torch.cat([s.h_v.to(hv.dtype), hv], 2)
        T, L = k.shape[2], q.shape[2]
        kp, vp = self._persistent_kv(x)
        pos = torch.arange(T, device=x.device)
        keys = torch.cat([rope(hk, pos), rope(k, pos)], 2)
        causal = causal_mask(L, T, device=x.device)  # the same rule for h and for x
        o = masked_attention(rope(q, pos[T - L:]), keys, torch.cat([hv, v], 2),
                             torch.cat([causal, causal], -1), k_persistent=kp, v_persistent=vp,
                             q_persistent=q)
        y = self.o_proj(rearrange(o, "b h l e -> b l (h e)").to(x.dtype))
        # 3. the memory learns from the attention output; 4. o = y ⊗ M_t(y)
        m, memory, conv = self.memory(self.norm_mem_in(y), s.memory, s.conv)
        if self.segment_len == T:  # the segment is complete: its caches are dropped
            k, v, hk, hv = (t[:, :, :0] for t in (k, v, hk, hv))
        return self._gate(y, m), TitansState(memory, conv, k, v, hk, hv, seg_w)

    # ------------------------------------------------------------------ contract

    def forward(self, x: torch.Tensor, state: TitansState | None = None
                ) -> tuple[torch.Tensor, TitansState | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        s = state if state is not None else self.init_state(x.shape[0], device=x.device,
                                                            dtype=x.dtype)
        if self.variant == "mac":
            ys, t = [], 0
            while t < x.shape[1]:  # segment-aligned pieces: a loop over segments, not tokens
                n = min(self.segment_len - s.attn_k.shape[2], x.shape[1] - t)
                y, s = self._mac_piece(x[:, t:t + n], s)
                ys.append(y)
                t += n
            y = torch.cat(ys, 1)
        elif self.variant == "swa":
            y, ck, cv = self._swa(x, s.attn_k, s.attn_v)
            s = s._replace(attn_k=ck, attn_v=cv)
        elif self.variant == "lmm":
            y, memory, conv = self.memory(x, s.memory, s.conv)
            s = s._replace(memory=memory, conv=conv)
        elif self.variant == "mag":
            a, ck, cv = self._swa(x, s.attn_k, s.attn_v)
            m, memory, conv = self.memory(x, s.memory, s.conv)
            y = self._gate(a, m)
            s = s._replace(memory=memory, conv=conv, attn_k=ck, attn_v=cv)
        else:  # mal
            m, memory, conv = self.memory(x, s.memory, s.conv)
            y, ck, cv = self._swa(m, s.attn_k, s.attn_v)
            s = s._replace(memory=memory, conv=conv, attn_k=ck, attn_v=cv)
        return y, (s if state is not None else None)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> TitansState:
        dtype = dtype or torch.float32
        empty = torch.zeros(batch_size, self.attn_heads, 0, self.d // self.attn_heads,
                            device=device, dtype=dtype)
        if self.variant == "swa":
            return TitansState(None, None, empty, empty.clone(), None, None, None)
        memory = self.memory.initial_memory(batch_size, dtype)
        if device is not None:
            memory = NeuralMemoryState(*(tuple(w.to(device) for w in t) if isinstance(t, tuple)
                                         else t.to(device) for t in memory))
        conv = (self.memory.conv.init_state(batch_size, device=device, dtype=dtype)
                if self.memory.conv is not None else None)
        if self.variant == "lmm":
            return TitansState(memory, conv, None, None, None, None, None)
        if self.variant == "mac":
            return TitansState(memory, conv, empty, empty.clone(), empty.clone(),
                               empty.clone(), memory.weights)
        return TitansState(memory, conv, empty, empty.clone(), None, None, None)

    def state_size(self, seq_len: int) -> int:
        mem = self.memory
        if mem is None:  # swa
            return 2 * self.d * min(seq_len, self.window - 1)
        H, K, C = mem.n_heads, mem.head_dim, mem.chunk_size
        size = 2 * mem.memory_size()  # weights and momentum
        size += (seq_len % C) * H * (2 * K + 3)  # the unfinished chunk: k, v, θ, η, α
        if mem.conv is not None:
            size += 3 * H * K * (mem.conv.width - 1)
        if self.variant in ("mag", "mal"):
            size += 2 * self.d * min(seq_len, self.window - 1)
        elif self.variant == "mac":
            size += 4 * self.d * (seq_len % self.segment_len) + mem.memory_size()
        return size
