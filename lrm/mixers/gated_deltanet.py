"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025), with DeltaNet and GDN-2 as options.

Per head (state h ∈ ℝ^{K×V}, the transpose of the paper's S):

    q_t = L2(SiLU(conv_q(W_q x)_t)),  k_t = L2(SiLU(conv_k(W_k x)_t)),  v_t = SiLU(conv_v(W_v x)_t)
    g_t = −exp(A_log) · softplus(W_a x_t + dt_bias)        α_t = exp(g_t)   (Mamba-2's gate)
    β_t = σ(W_b x_t)
    h_t = α_t (I − β_t k_t k_tᵀ) h_{t−1} + β_t k_t v_tᵀ     (the paper's S_t = h_tᵀ:
    o_t = h_tᵀ q_t / √K                                       S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ)
                                                                    + β_t v_t k_tᵀ, o_t = S_t q_t)
    y_t = W_o concat_heads( RMSNorm(o_t) ⊙ SiLU(W_g x_t) )

Symbols: B batch, L length, d model width, H heads, K = head_dim (key/query head width),
V = expand_v · K (value head width), W conv width.

Options:
- ``use_forget_gate=False``: α ≡ 1 (no a_proj, A_log, dt_bias): DeltaNet (Yang et al., 2024).
  With ``use_gate=False`` as well (plain RMSNorm on o, no g_proj) this is fla's DeltaNet layer
  with L2-normalised q/k and a sigmoid β.
- ``delta_rule=False``: drop the −β k kᵀ erase term, h_t = α_t h_{t−1} + β_t k_t v_tᵀ: gated
  linear attention with the same projections (Mamba-2-style), the ablation of the delta rule.
  It runs on the GDN-2 op with the erase gate b ≡ 0.
- ``gates="gdn2"``: Gated DeltaNet-2 (NVlabs/GatedDeltaNet-2, fla ``layers/gdn2.py``):
  a channel-wise log decay g_t ∈ ℝ^K = −exp(A_log_h) · softplus(f_proj(x_t) + dt_bias) with
  f_proj a low-rank (d → V → H·K) projection and dt_bias per key channel; an erase gate
  b_t = σ(W_b x_t) ∈ [0,1]^K (b_proj: d → H·K) and a write gate w_t = σ(W_w x_t) ∈ [0,1]^V
  (w_proj: d → H·V):  h_t = (I − k_t (b_t ⊙ k_t)ᵀ) Diag(exp(g_t)) h_{t−1} + k_t (w_t ⊙ v_t)ᵀ.
  Tied scalar gates (b = w = β, g = g·1) give GDN back exactly (tested).

Simplified vs the references: no grouped value heads (num_v_heads), no allow_neg_eigval, no
variable-length packing; the GDN-2 option keeps GDN's output gate (full-rank g_proj with SiLU)
where the GDN-2 layer uses a low-rank g_proj, so that ``gates`` changes the recurrence only.
Linear layers keep PyTorch's default init (fla re-initialises them at the model level).
Defaults follow fla's layer: n_heads · head_dim ≈ 0.75 d, expand_v = 2, conv width 4 without
bias, A ~ U(0, 16) (U(1, 16) for GDN-2), dt log-uniform in [1e-3, 0.1]. The head width scales
with d: head_dim = min(256, d/4), the paper's K = 256 from d = 1024 on (its 1.3B model, d = 2048,
has 6 heads of K = 256, V = 512) and 3 heads of K = d/4 below, so that the layer keeps about
6 d² parameters and a state of H·K·V = 1.5 d·K at every width (with a fixed K = 256 the bare
mixer at d = 32 would hold 17 times attention's parameters).

Kernels: flash-linear-attention's ``chunk_gated_delta_rule`` (training, prefill) and
``fused_recurrent_gated_delta_rule`` (decoding), or ``chunk_gdn2``/``fused_recurrent_gdn2``,
via :mod:`lrm.ops.delta_rule`; on CPU the chunked WY pure-PyTorch reference. The short convs use
:class:`lrm.nn.ShortConv` (causal-conv1d when available).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lrm.dtypes import compute_dtype, promote, upcast
from lrm.nn import RMSNorm, ShortConv, init_dt, inv_softplus, l2norm, tag
from lrm.ops.delta_rule import gated_delta_rule, gdn2

GATES = ("gdn", "gdn2")


class GatedDeltaNetState(NamedTuple):
    conv_q: torch.Tensor  # (B, H·K, W−1): the last W−1 inputs of the q conv
    conv_k: torch.Tensor  # (B, H·K, W−1)
    conv_v: torch.Tensor  # (B, H·V, W−1)
    recurrent: torch.Tensor  # (B, H, K, V), in the compute dtype (fp32 unless float64)


def gdn_gates(a: torch.Tensor | None, b: torch.Tensor, A_log: torch.Tensor | None = None,
              dt_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The scalar gates of the gated delta rule from their projections a = W_a x and b = W_b x
    (B, L, H), with A_log and dt_bias (H,):

        g = log α = −exp(A_log) · softplus(a + dt_bias),    β = σ(b)

    g ≡ 0 (α ≡ 1: DeltaNet) when a is None. Returns (g, β) in the compute dtype. Gated
    DeltaNet and Oryx's recurrent mode both take their gates from here."""
    dtype = compute_dtype(a, b)
    beta = torch.sigmoid(upcast(b, dtype))
    if a is None:
        return beta.new_zeros(beta.shape), beta
    A = upcast(A_log, dtype).exp()
    g = -A * F.softplus(upcast(a, dtype) + upcast(dt_bias, dtype))
    return g, beta


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet token mixer: gated delta rule with short convs and a gated output norm."""

    default_mlp_ratio: ClassVar[float] = 4.0  # fla's GatedDeltaNetConfig: hidden_ratio=4 SwiGLU

    def __init__(self, d: int, *, n_heads: int | None = None, head_dim: int | None = None,
                 expand_v: float = 2.0, gates: str = "gdn", use_forget_gate: bool = True,
                 delta_rule: bool = True, use_gate: bool = True, d_conv: int = 4,
                 conv_bias: bool = False, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if gates not in GATES:
            raise ValueError(f"gates must be one of {GATES}, got {gates!r}")
        if gates == "gdn2" and not delta_rule:
            raise ValueError("delta_rule=False is a GDN ablation; GDN-2's erase gate b already "
                             "decides how much is erased")
        if head_dim is None:  # the paper's 256 from d = 1024 on (module docstring)
            head_dim = max(1, min(256, d // 4))
        if n_heads is None:  # fla: num_heads · head_dim = 0.75 · hidden_size
            n_heads = max(1, round(0.75 * d / head_dim))
        head_v_dim = int(head_dim * expand_v)
        if n_heads < 1 or head_dim < 1 or head_v_dim != head_dim * expand_v:
            raise ValueError(f"need n_heads >= 1 and an integer head_dim · expand_v; got "
                             f"n_heads={n_heads}, head_dim={head_dim}, expand_v={expand_v}")
        self.d, self.n_heads, self.head_k_dim, self.head_v_dim = d, n_heads, head_dim, head_v_dim
        self.key_dim, self.value_dim = n_heads * head_dim, n_heads * head_v_dim
        self.gates, self.use_forget_gate, self.delta_rule = gates, use_forget_gate, delta_rule
        self.use_gate = use_gate

        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.q_conv1d = ShortConv(self.key_dim, d_conv, bias=conv_bias, activation="silu")
        self.k_conv1d = ShortConv(self.key_dim, d_conv, bias=conv_bias, activation="silu")
        self.v_conv1d = ShortConv(self.value_dim, d_conv, bias=conv_bias, activation="silu")

        if gates == "gdn":
            self.b_proj = nn.Linear(d, n_heads, bias=False)  # β, one per head
            if use_forget_gate:
                self.a_proj = nn.Linear(d, n_heads, bias=False)
                A = torch.empty(n_heads).uniform_(0, 16)
                dt = init_dt(n_heads, 1e-3, 0.1, floor=1e-4)
        else:
            self.b_proj = nn.Linear(d, self.key_dim, bias=False)  # erase gate, per key channel
            self.w_proj = nn.Linear(d, self.value_dim, bias=False)  # write gate, per value chan.
            if use_forget_gate:
                self.f_proj = nn.Sequential(nn.Linear(d, head_v_dim, bias=False),
                                            nn.Linear(head_v_dim, self.key_dim, bias=False))
                A = torch.empty(n_heads).uniform_(1, 16)
                dt = init_dt(self.key_dim, 1e-3, 0.1, floor=1e-4)
        if use_forget_gate:
            # α = exp(−exp(A_log) · softplus(·)): neither wants weight decay (as fla's layer)
            self.A_log = tag(nn.Parameter(torch.log(A)), weight_decay=0.0)
            self.dt_bias = tag(nn.Parameter(inv_softplus(dt)), weight_decay=0.0)

        if use_gate:
            self.g_proj = nn.Linear(d, self.value_dim, bias=False)
            self.o_norm = RMSNorm(head_v_dim, eps=norm_eps, norm_before_gate=True)
        else:
            self.o_norm = RMSNorm(head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)

    # -------------------------------------------------------------------------------- gates

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Every gate of the recurrence, from x (B, L, d), in the compute dtype.

        - GDN and DeltaNet (delta rule, scalar gates): ``(g, β, None)``, g = log α and β of
          shape (B, L, H); g ≡ 0 without the forget gate.
        - Otherwise GDN-2's channel-wise form ``(g, b, w)``: log decay g (B, L, H, K), erase
          gate b (B, L, H, K), write gate w (B, L, H, V). GDN without the delta rule is this form
          with b ≡ 0 (nothing erased), w ≡ β and the head's g on every key channel.
        """
        B, L, _ = x.shape
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        dtype = compute_dtype(x)
        if self.gates == "gdn":
            if self.use_forget_gate:
                g, beta = gdn_gates(self.a_proj(x), self.b_proj(x), self.A_log, self.dt_bias)
            else:
                g, beta = gdn_gates(None, self.b_proj(x))  # (B, L, H) each
            if self.delta_rule:
                return g, beta, None
            return (g[..., None].expand(B, L, H, K), beta.new_zeros(()).expand(B, L, H, K),
                    beta[..., None].expand(B, L, H, V))
        erase = rearrange(torch.sigmoid(upcast(self.b_proj(x), dtype)), "b l (h k) -> b l h k",
                          h=H)
        write = rearrange(torch.sigmoid(upcast(self.w_proj(x), dtype)), "b l (h v) -> b l h v",
                          h=H)
        if not self.use_forget_gate:
            g = erase.new_zeros(()).expand(B, L, H, K)
        else:
            A = upcast(self.A_log, dtype).exp()  # (H,)
            # (B, L, H·K)
            f = F.softplus(upcast(self.f_proj(x), dtype) + upcast(self.dt_bias, dtype))
            g = -A[:, None] * rearrange(f, "b l (h k) -> b l h k", h=H)
        return g, erase, write

    # -------------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor, state: GatedDeltaNetState | None = None
                ) -> tuple[torch.Tensor, GatedDeltaNetState | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        H, s = self.n_heads, state
        q, conv_q = self.q_conv1d(self.q_proj(x), None if s is None else s.conv_q)
        k, conv_k = self.k_conv1d(self.k_proj(x), None if s is None else s.conv_k)
        v, conv_v = self.v_conv1d(self.v_proj(x), None if s is None else s.conv_v)
        q = l2norm(rearrange(q, "b l (h k) -> b l h k", h=H))
        k = l2norm(rearrange(k, "b l (h k) -> b l h k", h=H))
        v = rearrange(v, "b l (h v) -> b l h v", h=H)

        g, beta_or_erase, write = self._gates(x)
        h0 = None if s is None else s.recurrent
        if write is None:  # scalar gates: the gated delta rule (fla's GDN kernels)
            o, h = gated_delta_rule(q, k, v, g, beta_or_erase, initial_state=h0,
                                    return_final_state=s is not None)
        else:  # channel-wise gates: GDN-2, or GDN without the delta rule
            o, h = gdn2(q, k, v, g, beta_or_erase, write, initial_state=h0,
                        return_final_state=s is not None)

        if self.use_gate:
            o = self.o_norm(o, rearrange(self.g_proj(x), "b l (h v) -> b l h v", h=H))
        else:
            o = self.o_norm(o)
        y = self.o_proj(rearrange(o, "b l h v -> b l (h v)").to(x.dtype))
        if s is None:
            return y, None
        return y, GatedDeltaNetState(conv_q, conv_k, conv_v, h)

    # -------------------------------------------------------------------------------- state

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> GatedDeltaNetState:
        conv = dict(device=device, dtype=dtype or torch.float32)
        return GatedDeltaNetState(
            self.q_conv1d.init_state(batch_size, **conv),
            self.k_conv1d.init_state(batch_size, **conv),
            self.v_conv1d.init_state(batch_size, **conv),
            torch.zeros(batch_size, self.n_heads, self.head_k_dim, self.head_v_dim,
                        device=device, dtype=promote(dtype)))

    def state_size(self, seq_len: int) -> int:
        """Constant in seq_len: H·K·V for the matrix memory + the conv windows."""
        conv = (self.q_conv1d.width - 1) * (2 * self.key_dim + self.value_dim)
        return self.n_heads * self.head_k_dim * self.head_v_dim + conv
