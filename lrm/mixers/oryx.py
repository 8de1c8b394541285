"""Oryx-style multi-mixer: attention and a linear recurrence in one layer, switched along the
sequence ("Multi-Mixer Models", Li, Trockman, Suresh & Sun, 2026).

This is lrm's own reading of the paper. Only its abstract and secondary descriptions were
available and there is no public code, so every equation below is a reconstruction; each
choice the sources do not fix is marked [ours].

One layer holds one shared key/value stream and two read-outs. Every token is in attention
mode or in recurrent mode; both memories (the KV cache and the recurrent state) are written at
every token, whatever its mode, so a switch needs no hand-over.

Shared by both modes (per head, H heads):

    k_t = L2(SiLU(conv_k(W_k x)_t))         ∈ ℝ^K, unit norm                 [ours: L2, SiLU]
    v_t = SiLU(conv_v(W_v x)_t)             ∈ ℝ^V                             [ours: SiLU]
    y_t = W_O · concat_h( RMSNorm_V(o_t) ⊙ SiLU(W_g x_t) )                    (the paper's Eq. 2)

Attention mode (query q^A_t = W_qA x_t):

    o_t = Σ_{j≤t} softmax_j(q^A_t · k_j) v_j            (k_j has norm 1: this is the usual
                                                          q·k/√K on a key of norm √K, as in
                                                          the reference note's k = RMS(W_k x))

Recurrent mode, ``core="mamba2"`` (SSD with C = q^R_t = W_qR x_t, B = k_t, x = v_t):

    Δ_t = softplus(w_Δ · x_t + dt_bias),   a_t = exp(−Δ_t exp(A_log))             per head
    S_t = a_t S_{t−1} + Δ_t v_t k_tᵀ,       o_t = S_t q^R_t + D v_t

Recurrent mode, ``core="gdn"`` (the gated delta rule with q^R_t = L2(SiLU(W_qR x_t))):

    α_t = exp(−exp(A_log) softplus(w_α · x_t + dt_bias)),   β_t = σ(w_β · x_t)     per head
    S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ,      o_t = S_t q^R_t / √K

Mode-specific parameters: ``q_proj_attn`` (attention); ``q_proj_rec`` and the core's
per-head parameters (``dt_proj``, ``dt_bias``, ``A_log``, ``D`` for Mamba-2; ``a_proj``,
``dt_bias``, ``A_log``, ``b_proj`` for GDN). Everything else is shared.

Symbols: B batch, L length of this call, T tokens already seen, d model width, H heads, K key
(and query) head width, V = expand_v·K value head width, W conv width, m_t ∈ {0, 1} the mode of
absolute position t (1 = attention), o = m ⊙ o^attn + (1 − m) ⊙ o^rec.

**Tying.** ``tied_fraction()`` is the share of one layer's parameters (this mixer plus the
Block's MLP at ``default_mlp_ratio``; the paper counts whole models) that both modes use: about
0.92 with the defaults (H·K = d/2, V = 2K, MLP ratio 4). The mixer alone ties about 0.77,
because each mode owns a full-rank query; ``tied_fraction(mlp_ratio=0)`` reports it. [ours:
what is counted]

**The schedule** decides m_t from the absolute position t, a seed and nothing else, so the
full sequence, chunks with a state, and token-by-token decoding agree for every schedule. It
lives in :mod:`lrm.oryx_schedule` (:class:`~lrm.oryx_schedule.Schedule`, specs as strings:
``attn``, ``rec``, ``from:P``, ``suffix:F``, ``every:N:W``, ``rand:P[:C[:SEED]]``; see there).

Training (``train_p_attn``, e.g. (0, 0.1, 0.5, 1), the reference note's set): each training
forward draws P from the set and a seed, then runs ``rand:P:train_chunk:seed``. The n-th
training call of a layer uses draw n of a hash of ``train_seed``; every layer counts its own
calls (the buffer ``train_calls``, saved in checkpoints), so all layers of a model see the same
mask in the same step without any model-level plumbing. [ours: the sources say only "a random
attention:linear ratio per chunk"; a per-chunk Bernoulli gives a fraction P in expectation]

A schedule reaches the mixer, in order of precedence, by ``forward(x, state, schedule=...)``,
by :func:`lrm.oryx_schedule.use_schedule` (a context manager that sets it on every Oryx layer
of a model, so that ``LRModel`` and ``Block`` need no changes), by a training draw, or by the
constructor's ``schedule``.

**Computation.** The recurrence runs over every token of the call through the core's op
(:func:`lrm.ops.ssd.ssd`, :func:`lrm.ops.delta_rule.gated_delta_rule`; mamba-ssm / fla kernels
on CUDA through their dispatch); its output is kept at the recurrent positions. Attention is
computed only for the query rows in attention mode: one call of the attention op
(:func:`lrm.ops.attention.attention`, on ``F.scaled_dot_product_attention``) per contiguous
attention span, the span's queries against every earlier key. A span that starts the sequence
runs causal (the fused flash kernels, linear memory); a later span passes an explicit
(span × keys) boolean mask, and PyTorch may then take its math path, O(span × keys) memory.
A stateless call skips the memory that no position reads (no recurrence under ``attn``, no KV
cache under ``rec``); with a state both are always updated.

Default sizes [ours]: H·K = d/2 with K = min(64, d/4), i.e. heads of 64 from d = 256 on and
2 heads of d/4 below, so that the layer's parameters (about 4.5 d² in the mixer) and state
scale with d.

Simplifications and choices [ours]: no conv on the queries; the GDN core's q^R has no conv
(GDN has one); Mamba-2's B and C per head (ngroups = H) and its output norm replaced by the
shared per-head gated RMSNorm; no RoPE (as the GDN and Mamba-2 baselines, and FoX); the KV
cache is kept for every token, so this saves attention FLOPs, not decode memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lrm.dtypes import compute_dtype, upcast
from lrm.mixers.gated_deltanet import gdn_gates
from lrm.nn import MLP, RMSNorm, ShortConv, init_dt, inv_softplus, l2norm, tag
from lrm.ops.attention import attention
from lrm.ops.delta_rule import gated_delta_rule
from lrm.ops.ssd import ssd
from lrm.oryx_schedule import Schedule, hash_uniform, runs

CORES = ("mamba2", "gdn")


# ----------------------------------------------------------------------------- the mixer


class OryxState(NamedTuple):
    conv_k: torch.Tensor  # (B, H·K, W−1): the last W−1 inputs of the k conv
    conv_v: torch.Tensor  # (B, H·V, W−1)
    k: torch.Tensor  # (B, H, T, K): the KV cache (unit-norm keys)
    v: torch.Tensor  # (B, H, T, V)
    rec: torch.Tensor  # recurrent state in the compute dtype: (B, H, V, K) for mamba2
    #                    (SSD's (P, N) layout), (B, H, K, V) for gdn (fla's layout)


class Oryx(nn.Module):
    """Oryx-style multi-mixer (see the module docstring): attention or a linear recurrence per
    position, over one shared key/value stream."""

    default_mlp_ratio: ClassVar[float] = 4.0

    def __init__(self, d: int, *, core: str = "gdn", n_heads: int | None = None,
                 head_dim: int | None = None, expand_v: float = 2.0, d_conv: int = 4,
                 schedule: str = "every:64:6",
                 train_p_attn: Sequence[float] | None = (0.0, 0.1, 0.5, 1.0),
                 train_chunk: int = 64, train_seed: int = 0, chunk_size: int = 64,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        if core not in CORES:
            raise ValueError(f"core must be one of {CORES}, got {core!r}")
        if head_dim is None:  # [ours] 64 from d = 256 on, d/4 below (module docstring)
            head_dim = max(1, min(64, d // 4))
        if n_heads is None:  # [ours] H·K = d/2 and H·V = d with the default expand_v = 2
            n_heads = max(1, d // (2 * head_dim))
        head_v_dim = int(head_dim * expand_v)
        if n_heads < 1 or head_dim < 1 or head_v_dim != head_dim * expand_v:
            raise ValueError(f"need n_heads >= 1 and an integer head_dim * expand_v; got "
                             f"n_heads={n_heads}, head_dim={head_dim}, expand_v={expand_v}")
        self.d, self.core, self.n_heads = d, core, n_heads
        self.head_k_dim, self.head_v_dim = head_dim, head_v_dim
        self.key_dim, self.value_dim = n_heads * head_dim, n_heads * head_v_dim
        self.chunk_size = chunk_size
        self.schedule = Schedule.parse(schedule)
        if train_p_attn is not None:
            train_p_attn = tuple(float(p) for p in train_p_attn)
            if not train_p_attn or not all(0.0 <= p <= 1.0 for p in train_p_attn):
                raise ValueError(f"train_p_attn must be a non-empty set of fractions in "
                                 f"[0, 1] (or None for no training draws), got {train_p_attn}")
        if train_chunk < 1:
            raise ValueError(f"train_chunk must be >= 1, got {train_chunk}")
        self.train_p_attn, self.train_chunk, self.train_seed = train_p_attn, train_chunk, train_seed
        self.schedule_override: Schedule | None = None  # set by use_schedule()
        # how many training draws this layer has made: the n-th call uses draw n
        self.register_buffer("train_calls", torch.zeros((), dtype=torch.long))

        H = n_heads
        # ---- shared by both modes
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.k_conv1d = ShortConv(self.key_dim, d_conv, bias=False, activation="silu")
        self.v_conv1d = ShortConv(self.value_dim, d_conv, bias=False, activation="silu")
        self.g_proj = nn.Linear(d, self.value_dim, bias=False)
        self.o_norm = RMSNorm(head_v_dim, norm_eps, norm_before_gate=True)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        # ---- attention mode
        self.q_proj_attn = nn.Linear(d, self.key_dim, bias=False)
        # ---- recurrent mode
        self.q_proj_rec = nn.Linear(d, self.key_dim, bias=False)
        dt = init_dt(H, 1e-3, 0.1, floor=1e-4)  # Mamba-2's and GDN's Δ initialisation
        self.dt_bias = tag(nn.Parameter(inv_softplus(dt)), weight_decay=0.0)
        if core == "mamba2":
            self.dt_proj = nn.Linear(d, H, bias=False)
            A = torch.empty(H).uniform_(1, 16)  # mamba-ssm's A_init_range
            self.A_log = tag(nn.Parameter(torch.log(A)), weight_decay=0.0)
            self.D = tag(nn.Parameter(torch.ones(H)), weight_decay=0.0)
        else:
            self.a_proj = nn.Linear(d, H, bias=False)
            self.b_proj = nn.Linear(d, H, bias=False)
            A = torch.empty(H).uniform_(0, 16)  # fla's GatedDeltaNet layer
            self.A_log = tag(nn.Parameter(torch.log(A)), weight_decay=0.0)

    # ---------------------------------------------------------------------------- tying

    def mode_parameters(self) -> dict[str, list[str]]:
        """Parameter names by use: ``shared`` (both modes), ``attn`` and ``rec`` (one mode)."""
        attn = ["q_proj_attn.weight"]
        rec = ["q_proj_rec.weight", "dt_bias", "A_log"] + (
            ["dt_proj.weight", "D"] if self.core == "mamba2" else ["a_proj.weight",
                                                                    "b_proj.weight"])
        shared = [n for n, _ in self.named_parameters() if n not in attn + rec]
        return {"shared": shared, "attn": attn, "rec": rec}

    def tied_fraction(self, mlp_ratio: float | None = None) -> float:
        """Share of one layer's parameters used by both modes: this mixer plus the Block's MLP
        of ``mlp_ratio`` (None: ``default_mlp_ratio``; 0: the mixer alone)."""
        ratio = self.default_mlp_ratio if mlp_ratio is None else mlp_ratio
        mlp = 0
        if ratio > 0:
            with torch.device("meta"):  # count without allocating
                mlp = sum(p.numel() for p in MLP(self.d, ratio).parameters())
        params = dict(self.named_parameters())
        shared = sum(params[n].numel() for n in self.mode_parameters()["shared"])
        total = sum(p.numel() for p in params.values())
        return (shared + mlp) / (total + mlp)

    # ---------------------------------------------------------------------------- schedule

    def _schedule(self, schedule: str | Schedule | None) -> Schedule:
        if schedule is not None:
            return Schedule.parse(schedule)
        if self.schedule_override is not None:
            return self.schedule_override
        if self.training and self.train_p_attn is not None:
            n = int(self.train_calls)
            with torch.no_grad():
                self.train_calls += 1
            u = hash_uniform(self.train_seed, torch.tensor([2 * n, 2 * n + 1]))
            p = self.train_p_attn[min(int(u[0] * len(self.train_p_attn)),
                                      len(self.train_p_attn) - 1)]
            return Schedule("rand", p=p, n=self.train_chunk, seed=int(u[1] * 2 ** 31))
        return self.schedule

    # ---------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, state: OryxState | None = None, *,
                schedule: str | Schedule | None = None
                ) -> tuple[torch.Tensor, OryxState | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        L, H = x.shape[1], self.n_heads
        cd = compute_dtype(x)
        s = state
        T = 0 if s is None else s.k.shape[2]
        # (L,) bool, True = attention; only a stateless call knows its total length
        mode = self._schedule(schedule).mask(T, L, L if s is None else None)
        any_attn, any_rec = bool(mode.any()), not bool(mode.all())

        k, conv_k = self.k_conv1d(self.k_proj(x), None if s is None else s.conv_k)
        v, conv_v = self.v_conv1d(self.v_proj(x), None if s is None else s.conv_v)
        k = l2norm(upcast(rearrange(k, "b l (h e) -> b l h e", h=H), cd))  # (B, L, H, K)
        v = upcast(rearrange(v, "b l (h e) -> b l h e", h=H), cd)  # (B, L, H, V)

        # recurrent memory: every token writes it; read at the recurrent positions
        o_rec = rec = None
        if any_rec or s is not None:
            o_rec, rec = self._recurrence(x, k, v, None if s is None else s.rec, cd)

        # KV cache: every token is appended; read at the attention positions
        # contiguous: the conv leaves the channels strided by L, and PyTorch's fused SDPA
        # kernels need the head axis at stride 1 (else the math path: 3-5x slower on a CPU)
        k_all = rearrange(k, "b l h e -> b h l e").contiguous()
        v_all = rearrange(v, "b l h e -> b h l e").contiguous()
        if s is not None:
            k_all = torch.cat([upcast(s.k, cd), k_all], dim=2)  # (B, H, T+L, K)
            v_all = torch.cat([upcast(s.v, cd), v_all], dim=2)
        pieces = []
        q_attn = None
        if any_attn:
            q_attn = rearrange(upcast(self.q_proj_attn(x), cd), "b l (h e) -> b h l e", h=H)
        for start, end, attn in runs(mode):
            if attn:
                # queries at T+start..T+end−1 over keys 0..T+end−1 (unit-norm keys: scale 1)
                n = T + end
                o = attention(q_attn[:, :, start:end], k_all[:, :, :n], v_all[:, :, :n],
                              scale=1.0)
                pieces.append(rearrange(o, "b h l e -> b l h e"))
            else:
                pieces.append(o_rec[:, start:end])
        o = torch.cat(pieces, dim=1)  # (B, L, H, V)

        g = rearrange(self.g_proj(x), "b l (h e) -> b l h e", h=H)
        o = self.o_norm(o, g)
        y = self.o_proj(rearrange(o, "b l h e -> b l (h e)").to(x.dtype))
        if s is None:
            return y, None
        dt = s.k.dtype
        return y, OryxState(conv_k, conv_v, k_all.to(dt), v_all.to(dt), rec)

    def _recurrence(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    h0: torch.Tensor | None, cd: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The core over every token of the call: o^rec (B, L, H, V) and the new state."""
        H = self.n_heads
        q = rearrange(self.q_proj_rec(x), "b l (h e) -> b l h e", h=H)
        want_state = h0 is not None
        if self.core == "mamba2":
            delta = F.softplus(upcast(self.dt_proj(x), cd) + upcast(self.dt_bias, cd))
            A = -torch.exp(upcast(self.A_log, cd))  # (H,)
            out = ssd(v, delta, A, k, upcast(q, cd), self.chunk_size, D=upcast(self.D, cd),
                      initial_state=h0, return_final_state=want_state)
            o, h = out if want_state else (out, None)
        else:
            q = l2norm(F.silu(upcast(q, cd)))
            # log α and β (B, L, H), as in Gated DeltaNet
            g, beta = gdn_gates(self.a_proj(x), self.b_proj(x), self.A_log, self.dt_bias)
            o, h = gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                    return_final_state=want_state)
        return upcast(o, cd), upcast(h, cd)

    # ---------------------------------------------------------------------------- state

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> OryxState:
        dtype = dtype or torch.float32
        cd = compute_dtype(torch.empty(0, dtype=dtype))
        w = self.k_conv1d.width - 1
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        rec_shape = (batch_size, H, V, K) if self.core == "mamba2" else (batch_size, H, K, V)
        return OryxState(
            torch.zeros(batch_size, self.key_dim, w, device=device, dtype=dtype),
            torch.zeros(batch_size, self.value_dim, w, device=device, dtype=dtype),
            torch.zeros(batch_size, H, 0, K, device=device, dtype=dtype),
            torch.zeros(batch_size, H, 0, V, device=device, dtype=dtype),
            torch.zeros(rec_shape, device=device, dtype=cd))

    def state_size(self, seq_len: int) -> int:
        """Both memories: the KV cache grows by H·(K + V) a token; the recurrent state
        (H·K·V) and the conv windows are constant."""
        conv = (self.k_conv1d.width - 1) * (self.key_dim + self.value_dim)
        return conv + seq_len * (self.key_dim + self.value_dim) + (
            self.n_heads * self.head_k_dim * self.head_v_dim)
