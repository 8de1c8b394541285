"""Mamba (Gu & Dao, 2023): the selective state space block, "Mamba-1".

    [x; z] = W_in u_t                                   x, z ∈ R^{d_in},  d_in = expand · d
    x_t    = silu(causal depthwise conv_{d_conv}(x)_t)
    [δ_t; B_t; C_t] = W_x x_t                           δ ∈ R^{R}, B_t, C_t ∈ R^N
    Δ_t    = softplus(W_Δ δ_t + b_Δ)                    one step size per channel
    h_t    = exp(Δ_t ⊗ A) ⊙ h_{t-1} + (Δ_t ⊙ x_t) ⊗ B_t       h ∈ R^{d_in × N}, A = -exp(A_log)
    y_t    = h_t C_t + D ⊙ x_t
    out_t  = W_out (y_t ⊙ silu(z_t))

Symbols: B batch, L length, d model width, d_in inner width, N = ``d_state``, R = ``dt_rank``
(⌈d/16⌉ by default), W = ``d_conv``. Parameter names and initialisation follow mamba-ssm's
``mamba_simple.Mamba``: ``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj``; A_log =
log(1..N) per channel (S4D-real), ``dt_proj.bias`` = softplus⁻¹(Δ₀) with Δ₀ log-uniform in
[dt_min, dt_max] (floored at dt_init_floor), ``dt_proj.weight`` ~ U(±dt_scale/√R); A_log and D
take no weight decay (tagged). Weights of mamba-ssm or ``mambapy`` load with the same names.

State: the last W-1 conv inputs (B, d_in, W-1) and the SSM state h (B, d_in, N), kept in the
compute dtype (fp32 for half precision, float64 for float64; :mod:`lrm.dtypes`).

Kernels: the scan runs on mamba-ssm's CUDA ``selective_scan_fn`` when a full sequence is
processed without a state on CUDA, the conv on causal-conv1d's ``causal_conv1d_fn``; otherwise
(CPU, streaming with a state) on the chunked pure-PyTorch scan of
:mod:`lrm.ops.selective_scan`. Δ is computed here (not fused into the kernel) so that the
optional LongMamba filter (:mod:`lrm.ops.longmamba`, option ``longmamba``) can act on it.

Simplified vs mamba-ssm: no fused ``mamba_inner_fn`` path (it skips the Δ hook and the state);
the block-level residual, norm and layer-count rescaling of out_proj live outside the mixer.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from lrm.dtypes import compute_dtype, promote, upcast
from lrm.nn import ShortConv, init_dt, inv_softplus, tag
from lrm.ops.longmamba import LongMambaConfig, LongMambaFilter, decay_rate_per_channel
from lrm.ops.selective_scan import CHUNK_SIZE, selective_scan


class MambaState(NamedTuple):
    conv: torch.Tensor  # (B, d_inner, d_conv - 1), the last conv inputs, oldest first
    ssm: torch.Tensor  # (B, d_inner, d_state), in the compute dtype


class Mamba(nn.Module):
    """The Mamba-1 mixer: (B, L, d) -> (B, L, d), with a constant-size recurrent state."""

    default_mlp_ratio: ClassVar[float] = 0.0

    def __init__(self, d: int, *, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, chunk_size: int = CHUNK_SIZE,
                 longmamba: LongMambaConfig | dict | bool | None = None) -> None:
        super().__init__()
        self.d, self.d_state, self.d_conv = d, d_state, d_conv
        self.d_inner = int(expand * d)
        self.dt_rank = math.ceil(d / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size

        self.in_proj = nn.Linear(d, 2 * self.d_inner, bias=bias)
        self.conv1d = ShortConv(self.d_inner, d_conv, bias=conv_bias, activation="silu")
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # Δ starts log-uniform in [dt_min, dt_max] whatever δ is: the weight is small and the
        # bias is softplus⁻¹(Δ₀).
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_softplus(init_dt(self.d_inner, dt_min, dt_max,
                                                         floor=dt_init_floor)))
        # S4D-real: A[:, n] = -(n + 1), stored as its log so that A stays negative
        A = repeat(torch.arange(1, d_state + 1, dtype=torch.get_default_dtype()), "n -> e n",
                   e=self.d_inner)
        self.A_log = tag(nn.Parameter(torch.log(A)), weight_decay=0.0)
        self.D = tag(nn.Parameter(torch.ones(self.d_inner)), weight_decay=0.0)
        self.out_proj = nn.Linear(self.d_inner, d, bias=bias)

        cfg = LongMambaConfig.from_option(longmamba)
        self.longmamba = None if cfg is None else LongMambaFilter(self.d_inner, cfg)

    def forward(self, x: torch.Tensor, state: MambaState | None = None
                ) -> tuple[torch.Tensor, MambaState | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, d_in) each
        xs, conv_state = self.conv1d(xs, None if state is None else state.conv)
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        xs = rearrange(xs, "b l e -> b e l")  # the scan's layout, channels before length
        # Δ in the compute dtype (fp32 for half precision) with the bias added after the
        # low-rank projection, as the kernel does
        dtype = compute_dtype(x, self.A_log)
        delta = F.softplus(upcast(F.linear(dt, self.dt_proj.weight), dtype)
                           + upcast(self.dt_proj.bias, dtype))
        delta = rearrange(delta, "b l e -> b e l")
        A = -torch.exp(upcast(self.A_log, dtype))  # (d_in, N)
        if self.longmamba is not None:
            delta = self.longmamba(delta, decay_rate_per_channel(A))
        y = selective_scan(
            xs, delta, A, rearrange(B, "b l n -> b n l"), rearrange(C, "b l n -> b n l"),
            upcast(self.D, dtype), z=rearrange(z, "b l e -> b e l"),
            return_final_state=state is not None,
            initial_state=None if state is None else state.ssm, chunk_size=self.chunk_size)
        if state is not None:
            y, ssm_state = y
        out = self.out_proj(rearrange(y, "b e l -> b l e"))
        if state is None:
            return out, None
        return out, MambaState(conv_state, ssm_state)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> MambaState:
        return MambaState(
            self.conv1d.init_state(batch_size, device=device, dtype=dtype or torch.float32),
            torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                        dtype=promote(dtype)))

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.d_conv - 1 + self.d_state)
