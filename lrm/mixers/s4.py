"""S4: the structured state space sequence model (Gu, Goel & Ré, 2022).

Each of the H = d channels runs its own linear time-invariant SSM with state size N::

    x'(t) = A x(t) + B u(t),   y(t) = Re(C x(t)) + D u(t)          (continuous time)
    x_k = Ā x_{k-1} + B̄ u_k,   y_k = Re(C x_k) + D u_k              (step Δ, per channel)
    y = K ∗ u + D u,           K_ℓ = Re(C Ā^ℓ B̄)                    (the same, as a convolution)

and the block around it (state-spaces/s4 ``S4Block`` with ``FFTConv``) is

    out = GLU(W · drop(GELU(drop(y)))),   W: d -> 2d,   GLU(a, b) = a · σ(b).

A = Λ − P P* (diagonal plus rank one, unitarily equivalent to HiPPO-LegS,
:func:`lrm.ops.hippo.nplr_legs`), bilinear discretisation; the SSM filter K is the S4 paper's
Algorithm 1 (Cauchy kernel + Woodbury correction at the roots of unity, then an inverse FFT;
:func:`lrm.ops.ssm_conv.s4_filter`). As in the S4 code, the learned ``C`` is
C̃ = (I − Ā^{l_max})ᵀ C for the filter length ``l_max``: the filter for L ≤ l_max is the first L
taps of the l_max-tap filter; for L > l_max, C̃ is extended by doubling (C̃ ← (I + Ā^l)ᵀ C̃,
which the S4 code does in place and we do functionally). The diagonal variant, S4D, is
:mod:`lrm.mixers.s4d`.

Paths. Without a state, ``forward`` is the parallel path: filter, FFT convolution of length
2L. With a state (streaming and decoding) it is the discretised recurrence, continued exactly:
a chunk of n tokens is the n-tap filter convolution + the state's free response
Re(C Ā^{t+1} x₀) + the state handed on (:func:`lrm.ops.ssm_conv.ssm_conv`). One token costs
O(N) per channel: the bilinear DPLR step through Woodbury (paper, Theorem 2), with the true C
recovered from C̃ as the S4 code's ``_setup_step`` does (C = (I − Ā^{l_max})⁻ᵀ C̃, dense, cached
while the parameters do not change and no gradient is recorded). Dense matrices are written in
real coordinates [Re x, Im x]: with conjugate pairs the DPLR system is a real N-dimensional SSM
(:func:`lrm.ops.hippo.dplr_real`). The state is the complex SSM state of every channel, N/2
modes stored as (re, im): N floats per channel.

Symbols: B batch, L length of this call, H = d channels, N = d_state, S = n_ssm copies of
(A, B, P) shared round-robin over the channels, Δ = softplus(inv_dt) the step of each channel.

Parameters (names and shapes as state-spaces/s4's ``SSMKernelDPLR``, so weights copy across:
their ``layer.kernel.X`` is our ``X``, ``layer.D`` is ``D``, ``output_linear.0`` is
``output_linear``): ``inv_dt`` (H, 1), ``A_real`` = log(−Re A) and ``A_imag`` = −Im A
(S, N/2), ``B`` and ``P`` (1, S, N/2, 2), ``C`` (1, H, N/2, 2), complex numbers stored as
(re, im); ``D`` (1, H). A, B, P and dt get lr ``lr``/``lr_dt`` (1e-3) and no weight decay, as the
S4 code's ``register``; ``lr_C`` reproduces the S4 LRA configs where a float ``lr`` also sets
C's learning rate.

Compute dtype (:mod:`lrm.dtypes`): promote(input, float32); complex64, or complex128 in float64.
The recurrent form is solved in float64 whatever the dtype (it is ill-conditioned).

Simplified vs the S4 code: one output channel (``channels=1``); bidirectionality comes from
the generic ``lrm.model.Bidirectional`` (two independent copies, where the S4 code shares A, B
between the two directions of one kernel); ``init="legs"`` with rank 1 only; no kernel dropout,
bandlimit or ``rate``. The filter is pure PyTorch (the S4 repository's CUDA Cauchy extension and
pykeops are not used; the sums are chunked instead).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lrm.dtypes import complex_of, compute_dtype, promote, upcast
from lrm.mixers.s4d import S4D, S4State, tied_dropout
from lrm.nn import init_dt, inv_softplus, tag
from lrm.ops.hippo import discretize_dplr, dplr_step, from_real, nplr_legs, to_real
from lrm.ops.ssm_conv import fft_conv, s4_filter, ssm_conv


def _c(x: torch.Tensor) -> torch.Tensor:
    """(…, 2) real -> (…) complex, complex64 or complex128 after the compute-dtype rule
    (parameters may have been cast to bf16, which has no complex dtype)."""
    return torch.view_as_complex(upcast(x, compute_dtype(x)).contiguous())


def _r(z: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(z.resolve_conj().contiguous())


class S4(nn.Module):
    """S4: A = Λ − P P* (HiPPO-LegS in NPLR form); Cauchy + Woodbury filter, FFT convolution."""

    default_mlp_ratio: ClassVar[float] = 0.0  # an S4 block is mixer only (its GLU is the MLP)

    def __init__(self, d: int, *, d_state: int = 64, l_max: int = 1024, dt_min: float = 0.001,
                 dt_max: float = 0.1, n_ssm: int | None = 1, dropout: float = 0.0,
                 tie_dropout: bool = True, lr: float | None = 0.001,
                 lr_dt: float | None = 0.001, lr_C: float | None = None) -> None:
        super().__init__()
        if l_max < 1:
            raise ValueError(f"l_max must be >= 1, got {l_max}")
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be even and >= 2 (conjugate pairs), got {d_state}")
        S = d if n_ssm is None else n_ssm
        if S < 1 or d % S:
            raise ValueError(f"n_ssm={n_ssm} must divide d={d}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d, self.d_state, self.n_ssm, self.l_max = d, d_state, S, l_max
        self.dropout, self.tie_dropout = dropout, tie_dropout
        Lam, P, B, _ = nplr_legs(d_state)  # (N/2,) complex128
        real = torch.get_default_dtype()  # built in float64, stored as the default dtype
        # dt: log-uniform in [dt_min, dt_max], stored so that softplus(inv_dt) = dt
        self.inv_dt = nn.Parameter(inv_softplus(init_dt(d, dt_min, dt_max))[:, None])
        self.A_real = nn.Parameter(torch.log(-Lam.real).to(real).repeat(S, 1))  # (S, N/2)
        self.A_imag = nn.Parameter((-Lam.imag).to(real).repeat(S, 1))
        self.B = nn.Parameter(_r(B.to(complex_of(real)).repeat(1, S, 1)))  # (1, S, N/2, 2)
        self.P = nn.Parameter(_r(P.to(complex_of(real)).repeat(1, S, 1)))
        # C ~ N(0, 1) complex (each part variance 1/2), one per channel
        self.C = nn.Parameter(_r(torch.randn(1, d, d_state // 2, dtype=complex_of(real))))
        self.D = nn.Parameter(torch.randn(1, d))
        self.output_linear = nn.Linear(d, 2 * d)
        tag(self.inv_dt, lr=lr_dt, weight_decay=0.0)
        for p in (self.A_real, self.A_imag, self.B, self.P):
            tag(p, lr=lr, weight_decay=0.0)
        if lr_C is not None:  # the S4 code: a float `lr` also reaches C (with the global decay)
            tag(self.C, lr=lr_C)
        with torch.no_grad():  # learn C̃ = (I − Ā^{l_max})ᵀ C for a random C, as the S4 code
            dA, _ = self._discrete(torch.float64)
            c = to_real(2 * self._C().conj()).to(torch.float64)  # C as a real output row
            c = c - torch.einsum("hn,hnm->hm", c, torch.linalg.matrix_power(dA, l_max))
            self.C.copy_(_r(from_real(c / 2).conj()[None].to(complex_of(self.C.dtype))))
        self._cache: tuple | None = None

    # -- parameters ------------------------------------------------------------------------------

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        """(S, N/2) -> (H, N/2): channel h uses SSM copy h mod S (the S4 code's repeat)."""
        return z.repeat(self.d // self.n_ssm, 1)

    def _dt(self) -> torch.Tensor:
        return F.softplus(upcast(self.inv_dt, compute_dtype(self.inv_dt)))  # (H, 1)

    def _A(self) -> torch.Tensor:
        dtype = compute_dtype(self.A_real)
        return self._expand(torch.complex(-torch.exp(upcast(self.A_real, dtype)),
                                          -upcast(self.A_imag, dtype)))

    def _B(self) -> torch.Tensor:
        return self._expand(_c(self.B)[0])

    def _P(self) -> torch.Tensor:
        return self._expand(_c(self.P)[0])

    def _C(self) -> torch.Tensor:
        return _c(self.C)[0]  # (H, N/2)

    def _discrete(self, dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense bilinear Ā (H, N, N), B̄ (H, N) in real coordinates, in ``dtype`` (default:
        the parameters' compute dtype)."""
        dtype = compute_dtype(self.A_real) if dtype is None else dtype
        cdtype = complex_of(dtype)
        return discretize_dplr(self._dt().to(dtype), self._A().to(cdtype), self._P().to(cdtype),
                               self._B().to(cdtype))

    def filter(self, L: int) -> torch.Tensor:
        """The SSM filter K (H, L) in the parameters' compute dtype."""
        dt, Lam, P, B, Ct = self._dt(), self._A(), self._P(), self._B(), self._C()
        Lk = self.l_max
        if Lk < L:  # extend C̃ from l_max to l_max·2^k >= L: (I − Ā^{2l}) = (I − Ā^l)(I + Ā^l)
            dA, _ = self._discrete()
            Al, c = torch.linalg.matrix_power(dA, Lk), to_real(2 * Ct.conj())
            while Lk < L:
                c = c + torch.einsum("hn,hnm->hm", c, Al)
                Al, Lk = Al @ Al, 2 * Lk
            Ct = from_real(c / 2).conj()
        return s4_filter(dt, Lam, P, B, Ct, Lk)[:, :L]

    def _recurrent_form(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense Ā, B̄ and the true output row (real coordinates, in the parameters' compute
        dtype): C = (I − Ā^{l_max})⁻ᵀ C̃.

        Computed in float64 (the solve is as ill-conditioned as Ā^{l_max} is close to I) and
        cached while the parameters are unchanged and no gradient is being recorded.
        """
        params = (self.inv_dt, self.A_real, self.A_imag, self.B, self.P, self.C)
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._cache is not None and self._cache[0] == key and not torch.is_grad_enabled():
            return self._cache[1]
        dA, dB = self._discrete(torch.float64)
        eye = torch.eye(dA.shape[-1], dtype=dA.dtype, device=dA.device)
        I_AL = eye - torch.linalg.matrix_power(dA, self.l_max)
        c_tilde = to_real(2 * self._C().conj()).to(dA.dtype)
        dC = torch.linalg.solve(I_AL.mT, c_tilde[..., None])[..., 0]
        dtype = compute_dtype(self.A_real)
        rec = (dA.to(dtype), dB.to(dtype), dC.to(dtype))
        if not torch.is_grad_enabled():
            self._cache = (key, rec)
        return rec

    def _stream(self, u: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dA, dB, dC = self._recurrent_form()
        if u.shape[-1] == 1:  # decoding: the O(N) DPLR step (Theorem 2), then y = C·x
            x = dplr_step(x0, u[..., 0], self._dt(), self._A(), self._P(), self._B())
            return (dC * to_real(x)).sum(-1)[..., None], x
        y, r = ssm_conv(u, dA, dB, dC, to_real(x0), taps=self.filter(u.shape[-1]))
        return y, from_real(r)

    # -- the block ---------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, state: S4State | None = None
                ) -> tuple[torch.Tensor, S4State | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        # the SSM runs in the compute dtype (FFTs and complex numbers need fp32 at least)
        u = upcast(x.transpose(1, 2), compute_dtype(x, self.C))  # (B, H, L)
        if state is None:
            y, new_state = fft_conv(u, self.filter(u.shape[-1])), None
        else:
            x0 = _c(upcast(state.ssm, u.dtype))  # (B, H, N/2)
            y, x_new = self._stream(u, x0)
            new_state = S4State(_r(x_new).to(state.ssm.dtype))
        y = y + upcast(self.D, u.dtype)[0, :, None] * u  # D skip
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


__all__ = ["S4", "S4D", "S4State"]
