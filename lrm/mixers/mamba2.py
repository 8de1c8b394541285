"""Mamba-2 (Dao & Gu, 2024): the SSD block, a scalar-decay SSM per head.

    [z; xBC; dt] = W_in u_t                              z ∈ R^{d_in}, dt ∈ R^H
    [x_t; B_t; C_t] = silu(causal depthwise conv_{d_conv}(xBC)_t)    x ∈ R^{H×P}, B, C ∈ R^{G×N}
    Δ_t    = softplus(dt_t + dt_bias)                    one step size per head
    H_t^h  = exp(Δ_t^h a_h) H_{t-1}^h + Δ_t^h x_t^h B_t^{g(h)ᵀ}       a_h = -exp(A_log_h)
    y_t^h  = H_t^h C_t^{g(h)} + D_h x_t^h
    out_t  = W_out RMSNorm(y_t ⊙ silu(z_t))              (gated RMSNorm, per group of heads)

Symbols: B batch, L length, d model width, d_in = expand · d, H = d_in / P heads of P =
``head_dim`` channels, G = ``ngroups`` groups of heads sharing B and C (head h uses group
g(h) = h // (H/G)), N = ``d_state``, W = ``d_conv``, Q = ``chunk_size`` (SSD chunk).

Sizes scale with d: N = min(128, max(16, d/2)) and P = min(64, d_in/8), i.e. mamba-ssm's
defaults N = 128 and P = 64 from d = 256 on (d_in = 512); below, N falls towards Mamba's 16 and
there are 8 heads, so that the B, C projections (2GN·d parameters) and the state (d_in·N) stay
in proportion to a small model (at d = 32, N = 128 would hold 7 times Mamba's state).

Parameter names and initialisation follow mamba-ssm's ``modules/mamba2.Mamba2``: ``in_proj``
(order z, x, B, C, dt), ``conv1d`` over [x, B, C], ``dt_bias`` = softplus⁻¹(Δ₀) with Δ₀
log-uniform in [dt_min, dt_max], ``A_log`` = log(U(A_init_range)), ``D`` (per head, or per
channel with ``D_has_hdim``), ``norm.weight`` and ``out_proj``; A_log, D and dt_bias take no
weight decay (tagged).

State: the last W-1 conv inputs (B, d_in + 2GN, W-1) and the SSM state (B, H, P, N) in the
compute dtype (fp32 for half precision, float64 for float64; :mod:`lrm.dtypes`).

Kernels: SSD runs on mamba-ssm's Triton ``mamba_chunk_scan_combined`` on CUDA (with the state
as ``initial_state``, so streaming uses it too), the conv on causal-conv1d's
``causal_conv1d_fn`` for stateless calls; otherwise on the pure-PyTorch chunked SSD of
:mod:`lrm.ops.ssd`. Δ is computed here, before the scan, so that the optional LongMamba filter
(:mod:`lrm.ops.longmamba`, option ``longmamba``) can act on it, as the LongMamba code does.

Simplified vs mamba-ssm: no ``d_ssm`` (every inner channel goes through the SSM; no extra gated
MLP part), no fused ``mamba_split_conv1d_scan_combined`` path, no tensor/sequence parallelism,
no packed variable-length batches (``seq_idx``/``cu_seqlens``).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lrm.dtypes import compute_dtype, promote, upcast
from lrm.nn import RMSNorm, ShortConv, init_dt, inv_softplus, tag
from lrm.ops.longmamba import LongMambaConfig, LongMambaFilter
from lrm.ops.ssd import ssd


class Mamba2State(NamedTuple):
    conv: torch.Tensor  # (B, d_inner + 2 * ngroups * d_state, d_conv - 1), oldest first
    ssm: torch.Tensor  # (B, nheads, head_dim, d_state), in the compute dtype


class Mamba2(nn.Module):
    """The Mamba-2 mixer: (B, L, d) -> (B, L, d), with a constant-size recurrent state."""

    default_mlp_ratio: ClassVar[float] = 0.0

    def __init__(self, d: int, *, d_state: int | None = None, d_conv: int = 4, expand: float = 2,
                 head_dim: int | None = None, ngroups: int = 1,
                 A_init_range: tuple[float, float] = (1.0, 16.0), D_has_hdim: bool = False,
                 rmsnorm: bool = True, norm_before_gate: bool = False, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 dt_limit: tuple[float, float] = (0.0, math.inf), bias: bool = False,
                 conv_bias: bool = True, chunk_size: int = 256,
                 longmamba: LongMambaConfig | dict | bool | None = None) -> None:
        super().__init__()
        if d_state is None:  # mamba-ssm's 128 from d = 256 on (module docstring)
            d_state = min(128, max(16, d // 2))
        self.d, self.d_state, self.d_conv = d, d_state, d_conv
        self.d_inner = int(expand * d)
        if head_dim is None:  # mamba-ssm's 64 from d_in = 512 on, 8 heads below
            head_dim = max(1, min(64, self.d_inner // 8))
        if self.d_inner % head_dim:
            raise ValueError(f"expand * d = {self.d_inner} is not divisible by "
                             f"head_dim={head_dim}")
        self.head_dim, self.nheads, self.ngroups = head_dim, self.d_inner // head_dim, ngroups
        if self.nheads % ngroups:
            raise ValueError(f"nheads={self.nheads} is not divisible by ngroups={ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must satisfy 0 < lo <= hi, got {A_init_range}")
        self.D_has_hdim, self.rmsnorm = D_has_hdim, rmsnorm
        self.dt_limit, self.chunk_size = tuple(dt_limit), chunk_size
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d, self.d_inner + self.conv_dim + self.nheads, bias=bias)
        self.conv1d = ShortConv(self.conv_dim, d_conv, bias=conv_bias, activation="silu")
        self.dt_bias = tag(nn.Parameter(inv_softplus(
            init_dt(self.nheads, dt_min, dt_max, floor=dt_init_floor))), weight_decay=0.0)
        A = torch.empty(self.nheads).uniform_(*A_init_range)
        self.A_log = tag(nn.Parameter(torch.log(A)), weight_decay=0.0)
        self.D = tag(nn.Parameter(torch.ones(self.d_inner if D_has_hdim else self.nheads)),
                     weight_decay=0.0)
        if rmsnorm:
            # mamba-ssm's RMSNormGated with group_size: the RMS of each group of heads
            self.norm = RMSNorm(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups,
                                norm_before_gate=norm_before_gate)
        self.out_proj = nn.Linear(self.d_inner, d, bias=bias)

        cfg = LongMambaConfig.from_option(longmamba)
        self.longmamba = None if cfg is None else LongMambaFilter(self.nheads, cfg)

    def forward(self, x: torch.Tensor, state: Mamba2State | None = None
                ) -> tuple[torch.Tensor, Mamba2State | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC, conv_state = self.conv1d(xBC, None if state is None else state.conv)
        xs, B, C = xBC.split(
            [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        # Δ (B, L, H) in the compute dtype (fp32 for half precision), limited, then
        # (optionally) LongMamba-filtered before the scan
        dtype = compute_dtype(x, self.A_log)
        delta = F.softplus(upcast(dt, dtype) + upcast(self.dt_bias, dtype))
        if self.dt_limit != (0.0, math.inf):
            delta = delta.clamp(min=self.dt_limit[0], max=self.dt_limit[1])
        A = -torch.exp(upcast(self.A_log, dtype))  # (H,)
        if self.longmamba is not None:
            delta = rearrange(self.longmamba(rearrange(delta, "b l h -> b h l"), A),
                              "b h l -> b l h")
        y = ssd(
            rearrange(xs, "b l (h p) -> b l h p", p=self.head_dim), delta, A,
            rearrange(B, "b l (g n) -> b l g n", g=self.ngroups),
            rearrange(C, "b l (g n) -> b l g n", g=self.ngroups),
            self.chunk_size,
            D=rearrange(self.D, "(h p) -> h p", p=self.head_dim) if self.D_has_hdim else self.D,
            z=None if self.rmsnorm else rearrange(z, "b l (h p) -> b l h p", p=self.head_dim),
            initial_state=None if state is None else state.ssm,
            return_final_state=state is not None)
        if state is not None:
            y, ssm_state = y
        y = rearrange(y, "b l h p -> b l (h p)")
        if self.rmsnorm:
            y = self.norm(y, z)
        out = self.out_proj(y)
        if state is None:
            return out, None
        return out, Mamba2State(conv_state, ssm_state)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> Mamba2State:
        return Mamba2State(
            self.conv1d.init_state(batch_size, device=device, dtype=dtype or torch.float32),
            torch.zeros(batch_size, self.nheads, self.head_dim, self.d_state, device=device,
                        dtype=promote(dtype)))

    def state_size(self, seq_len: int) -> int:
        return self.conv_dim * (self.d_conv - 1) + self.nheads * self.head_dim * self.d_state
