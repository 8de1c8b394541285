"""S4D: a diagonal state space per channel (Gu, Gupta, Goel & Ré, 2022), in one screen.

Each of the H = d channels runs its own SSM with N/2 complex modes (their conjugates implied):

    x_k = Ā x_{k-1} + B̄ u_k,   y_k = 2 Re(C x_k) + D u_k          Ā, B̄ diagonal, per channel
    ZOH:      Ā = exp(ΔA),  B̄ = (exp(ΔA) − 1)/A · B     bilinear: Ā = (1 + ΔA/2)/(1 − ΔA/2),
                                                                 B̄ = Δ/(1 − ΔA/2) · B
    y = K ∗ u + D u,   K_ℓ = 2 Re Σ_n C_n B̄_n Ā_n^ℓ                (the SSM filter, Vandermonde)
    out = GLU(W · drop(GELU(drop(y)))),   W: d -> 2d,   GLU(a, b) = a · σ(b)

Symbols: B batch, L length, H = d channels, N = d_state, Δ = softplus(inv_dt) the step of each
channel, S = n_ssm copies of (A, B) shared round-robin over the channels, A = −exp(A_real) −
i·A_imag (Re A < 0 whatever the parameters). Initialisations (``init``): S4D-LegS (the diagonal
of HiPPO-LegS's NPLR form, default), S4D-Lin, S4D-Inv, S4D-Real (:func:`lrm.ops.hippo.diag_init`).

This is the S4D paper's minimal layer (its ``s4d.py``) with state-spaces/s4's parameter names
(``inv_dt, A_real, A_imag, B, C, D, output_linear``; complex numbers stored as (re, im)), so its
weights load; A, B and dt get their own lr and no weight decay, as the S4 code's ``register``.
Without a state ``forward`` convolves the whole sequence with K by FFT; with a state (streaming,
decoding) it continues the recurrence exactly: a chunk is the convolution + the state's free
response + the state handed on (:func:`lrm.ops.ssm_conv.ssm_conv`). The state is the complex
SSM state, (B, H, N/2, 2) as (re, im): N floats per channel.

Compute dtype (:mod:`lrm.dtypes`): promote(input, float32); complex64, or complex128 in float64.
Simplified vs the S4 code: one output channel, no bidirectional kernel (see
``lrm.model.Bidirectional``), no kernel dropout, bandlimit or ``rate``; the filter is pure
PyTorch (no CUDA Vandermonde extension).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lrm.dtypes import complex_of, compute_dtype, promote, upcast
from lrm.nn import init_dt, inv_softplus, tag
from lrm.ops.hippo import DIAG_INITS, diag_init, discretize_diag
from lrm.ops.ssm_conv import fft_conv, s4d_filter, ssm_conv


class S4State(NamedTuple):
    ssm: torch.Tensor  # (B, H, N/2, 2): the complex half-basis SSM state as (re, im)


def tied_dropout(y: torch.Tensor, p: float, tie: bool, training: bool) -> torch.Tensor:
    """Dropout of y (B, L, H); with ``tie`` one mask per (sequence, channel), shared over L
    (the S4 code's DropoutNd)."""
    if not training or p == 0.0:
        return y
    if not tie:
        return F.dropout(y, p, training=True)
    keep = torch.rand(y.shape[0], 1, y.shape[2], device=y.device) >= p
    return y * keep.to(y.dtype) / (1 - p)


class S4D(nn.Module):
    """S4D: a diagonal state space per channel; Vandermonde filter, FFT convolution."""

    default_mlp_ratio: ClassVar[float] = 0.0  # an S4 block is mixer only (its GLU is the MLP)

    def __init__(self, d: int, *, d_state: int = 64, init: str = "legs", disc: str = "zoh",
                 dt_min: float = 0.001, dt_max: float = 0.1, n_ssm: int | None = 1,
                 dropout: float = 0.0, tie_dropout: bool = True, lr: float | None = 0.001,
                 lr_dt: float | None = 0.001, lr_C: float | None = None) -> None:
        super().__init__()
        S = d if n_ssm is None else n_ssm
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be even and >= 2 (conjugate pairs), got {d_state}")
        if init not in DIAG_INITS or disc not in ("zoh", "bilinear"):
            raise ValueError(f"init must be one of {DIAG_INITS} and disc 'zoh' or 'bilinear'; "
                             f"got init={init!r}, disc={disc!r}")
        if S < 1 or d % S or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need n_ssm dividing d={d} and dropout in [0, 1); got "
                             f"n_ssm={n_ssm}, dropout={dropout}")
        self.d, self.d_state, self.n_ssm, self.init, self.disc = d, d_state, S, init, disc
        self.dropout, self.tie_dropout = dropout, tie_dropout
        A, B = diag_init(init, d_state)  # (N/2,) complex128
        real = torch.get_default_dtype()
        self.inv_dt = nn.Parameter(inv_softplus(init_dt(d, dt_min, dt_max))[:, None])  # (H, 1)
        self.A_real = nn.Parameter(torch.log(-A.real).to(real).repeat(S, 1))  # (S, N/2)
        self.A_imag = nn.Parameter((-A.imag).to(real).repeat(S, 1))
        self.B = nn.Parameter(torch.view_as_real(B.to(complex_of(real)).repeat(1, S, 1)))
        # C ~ N(0, 1) complex (each part variance 1/2), one per channel: (1, H, N/2, 2)
        self.C = nn.Parameter(torch.view_as_real(
            torch.randn(1, d, d_state // 2, dtype=complex_of(real))))
        self.D = nn.Parameter(torch.randn(1, d))
        self.output_linear = nn.Linear(d, 2 * d)
        tag(self.inv_dt, lr=lr_dt, weight_decay=0.0)
        for p in (self.A_real, self.A_imag, self.B):
            tag(p, lr=lr, weight_decay=0.0)
        if lr_C is not None:  # the S4 code: a float `lr` also reaches C (with the global decay)
            tag(self.C, lr=lr_C)

    def ssm(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """Δ (H, 1) and A, B, C (H, N/2) complex, per channel (copy h mod S), in ``dtype``."""
        rep = self.d // self.n_ssm
        dt = F.softplus(upcast(self.inv_dt, dtype))
        A = torch.complex(-torch.exp(upcast(self.A_real, dtype)), -upcast(self.A_imag, dtype))
        B = torch.view_as_complex(upcast(self.B, dtype).contiguous())[0]
        C = torch.view_as_complex(upcast(self.C, dtype).contiguous())[0]
        return dt, A.repeat(rep, 1), B.repeat(rep, 1), C

    def filter(self, L: int) -> torch.Tensor:
        """The SSM filter K (H, L) in the parameters' compute dtype."""
        return s4d_filter(*self.ssm(compute_dtype(self.C)), L, self.disc)

    def forward(self, x: torch.Tensor, state: S4State | None = None
                ) -> tuple[torch.Tensor, S4State | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        dtype = compute_dtype(x, self.C)
        u = upcast(x.transpose(1, 2), dtype)  # (B, H, L)
        dt, A, B, C = self.ssm(dtype)
        L = u.shape[-1]
        if state is None:
            y, new_state = fft_conv(u, s4d_filter(dt, A, B, C, L, self.disc)), None
        else:  # continue the recurrence from x0; one token is a plain step, without K
            dA, dB = discretize_diag(dt, A, B, self.disc)
            K = s4d_filter(dt, A, B, C, L, self.disc) if L > 1 else None
            x0 = torch.view_as_complex(upcast(state.ssm, dtype).contiguous())  # (B, H, N/2)
            y, x_new = ssm_conv(u, dA, dB, 2 * C, x0, taps=K)  # 2·: the conjugate pairs
            new_state = S4State(torch.view_as_real(x_new).to(state.ssm.dtype))
        y = y + upcast(self.D, dtype)[0, :, None] * u  # D skip
        y = y.transpose(1, 2).to(x.dtype)  # (B, L, H)
        # FFTConv's dropout, then S4Block's GELU, dropout and output linear + GLU
        y = self._drop(F.gelu(self._drop(y)))
        return F.glu(self.output_linear(y), dim=-1), new_state

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        return tied_dropout(y, self.dropout, self.tie_dropout, self.training)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> S4State:
        return S4State(torch.zeros(batch_size, self.d, self.d_state // 2, 2, device=device,
                                   dtype=promote(dtype)))

    def state_size(self, seq_len: int) -> int:
        return self.d * self.d_state  # N/2 complex = N floats per channel, whatever seq_len


__all__ = ["S4D", "S4State", "tied_dropout"]
