"""S4 and S4D: structured state space sequence models (Gu, Goel & Ré, 2022; Gu et al., 2022).

Each of the H = d channels runs its own linear time-invariant SSM with state size N::

    x'(t) = A x(t) + B u(t),   y(t) = Re(C x(t)) + D u(t)          (continuous time)
    x_k = Ā x_{k-1} + B̄ u_k,   y_k = Re(C x_k) + D u_k              (step Δ, per channel)
    y = K ∗ u + D u,           K_ℓ = Re(C Ā^ℓ B̄)                    (the same, as a convolution)

and the block around it (state-spaces/s4 ``S4Block`` with ``FFTConv``) is

    out = GLU(W · drop(GELU(drop(y)))),   W: d -> 2d,   GLU(a, b) = a · σ(b).

- **S4D** (``S4D``): diagonal A (N/2 complex modes, conjugate pairs implied), initialised as
  S4D-LegS (``init="legs"``, the diagonal of HiPPO-LegS's NPLR form), S4D-Lin, S4D-Inv or
  S4D-Real; ZOH (default) or bilinear discretisation; the kernel is a Vandermonde product.
- **S4** (``S4``): A = Λ − P P* (diagonal plus rank one, unitarily equivalent to HiPPO-LegS),
  bilinear discretisation; the kernel is the S4 paper's Algorithm 1 (Cauchy kernel + Woodbury
  correction at the roots of unity, then an inverse FFT). As in the S4 code, the learned ``C``
  is C̃ = (I − Ā^{l_max})ᵀ C for the kernel length ``l_max``: the kernel for L ≤ l_max is the
  first L taps of the l_max-tap kernel; for L > l_max, C̃ is extended by doubling
  (C̃ ← (I + Ā^l)ᵀ C̃, which the S4 code does in place and we do functionally).

Paths. Without a state, ``forward`` is the parallel path: kernel, FFT convolution of length
2L. With a state (streaming and decoding) it is the discretised recurrence, continued exactly:
a chunk of n tokens is the n-tap kernel convolution + the state's free response Re(C Ā^{t+1} x₀)
+ the state handed on (``lrm.ops.ssm_kernel.ssm_conv``). One token costs O(N) per channel: the
diagonal step for S4D, and for S4 the bilinear DPLR step through Woodbury (paper, Theorem 2),
with the true C recovered from C̃ as the S4 code's ``_setup_step`` does
(C = (I − Ā^{l_max})⁻ᵀ C̃, dense, cached while the parameters do not change and no gradient is
recorded). Dense matrices of S4 are written in real coordinates [Re x, Im x]: with conjugate
pairs the DPLR system is a real N-dimensional SSM (``lrm.ops.ssm_kernel.dplr_real``).
The state is the complex SSM state of every channel, N/2 modes stored as (re, im):
N floats per channel.

Symbols: B batch, L length of this call, H = d channels, N = d_state, S = n_ssm copies of
(A, B, P) shared round-robin over the channels, Δ = softplus(inv_dt) the step of each channel.

Parameters (names and shapes as state-spaces/s4's ``SSMKernelDiag``/``SSMKernelDPLR``, so
weights copy across: their ``layer.kernel.X`` is our ``X``, ``layer.D`` is ``D``,
``output_linear.0`` is ``output_linear``): ``inv_dt`` (H, 1), ``A_real`` = log(−Re A) and
``A_imag`` = −Im A (S, N/2), ``B`` (1, S, N/2, 2), ``P`` (1, S, N/2, 2) [S4 only], ``C``
(1, H, N/2, 2), complex numbers stored as (re, im); ``D`` (1, H). A, B, P and dt get lr
``lr``/``lr_dt`` (1e-3) and no weight decay, as the S4 code's ``register``; ``lr_C`` reproduces
the S4 LRA configs where a float ``lr`` also sets C's learning rate.

Simplified vs the S4 code: one output channel (``channels=1``); bidirectionality comes from
the generic ``lrm.model.Bidirectional`` (two independent copies, where the S4 code shares A, B
between the two directions of one kernel); S4 supports ``init="legs"`` with rank 1 only; no
kernel dropout, bandlimit or ``rate``. Kernel: pure PyTorch (the S4 repository's CUDA
Cauchy/Vandermonde extension and pykeops are not used; the sums are chunked instead).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lrm.nn import init_dt, inv_softplus, tag
from lrm.ops.ssm_kernel import (
    DIAG_INITS,
    diag_init,
    discretize_diag,
    discretize_dplr,
    dplr_step,
    fft_conv,
    from_real,
    nplr_legs,
    s4_kernel,
    s4d_kernel,
    ssm_conv,
    to_real,
)


def _check_d_state(d_state: int) -> None:
    if d_state < 2 or d_state % 2:
        raise ValueError(f"d_state must be even and >= 2 (conjugate pairs), got {d_state}")


class S4State(NamedTuple):
    ssm: torch.Tensor  # (B, H, N/2, 2): the complex half-basis SSM state as (re, im), fp32


def _c(x: torch.Tensor) -> torch.Tensor:
    """(…, 2) real -> (…) complex64 (parameters may have been cast to bf16)."""
    return torch.view_as_complex(x.float().contiguous())


def _r(z: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(z.resolve_conj().contiguous())


class _SSMMixer(nn.Module):
    """What S4 and S4D share: dt, A, B, C, D, the output GLU, dropout, the state."""

    default_mlp_ratio: ClassVar[float] = 0.0  # an S4 block is mixer only (its GLU is the MLP)

    def _setup(self, d: int, d_state: int, dt_min: float, dt_max: float, n_ssm: int | None,
               dropout: float, tie_dropout: bool, lr: float | None, lr_dt: float | None,
               lr_C: float | None, A: torch.Tensor, B: torch.Tensor) -> None:
        """A, B: (N/2,) complex128 initial values, copied to the S copies."""
        S = d if n_ssm is None else n_ssm
        if S < 1 or d % S:
            raise ValueError(f"n_ssm={n_ssm} must divide d={d}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d, self.d_state, self.n_ssm = d, d_state, S
        self.dropout, self.tie_dropout = dropout, tie_dropout
        # dt: log-uniform in [dt_min, dt_max], stored so that softplus(inv_dt) = dt
        self.inv_dt = nn.Parameter(inv_softplus(init_dt(d, dt_min, dt_max))[:, None])
        self.A_real = nn.Parameter(torch.log(-A.real).float().repeat(S, 1))  # (S, N/2)
        self.A_imag = nn.Parameter((-A.imag).float().repeat(S, 1))
        self.B = nn.Parameter(_r(B.to(torch.complex64).repeat(1, S, 1)))  # (1, S, N/2, 2)
        # C ~ N(0, 1) complex (each part variance 1/2), one per channel
        self.C = nn.Parameter(_r(torch.randn(1, d, d_state // 2, dtype=torch.complex64)))
        self.D = nn.Parameter(torch.randn(1, d))
        self.output_linear = nn.Linear(d, 2 * d)
        tag(self.inv_dt, lr=lr_dt, weight_decay=0.0)
        for p in (self.A_real, self.A_imag, self.B):
            tag(p, lr=lr, weight_decay=0.0)
        if lr_C is not None:  # the S4 code: a float `lr` also reaches C (with the global decay)
            tag(self.C, lr=lr_C)

    # -- parameters ------------------------------------------------------------------------------

    def _expand(self, z: torch.Tensor) -> torch.Tensor:
        """(S, N/2) -> (H, N/2): channel h uses SSM copy h mod S (the S4 code's repeat)."""
        return z.repeat(self.d // self.n_ssm, 1)

    def _dt(self) -> torch.Tensor:
        return F.softplus(self.inv_dt.float())  # (H, 1)

    def _A(self) -> torch.Tensor:
        return self._expand(torch.complex(-torch.exp(self.A_real.float()), -self.A_imag.float()))

    def _B(self) -> torch.Tensor:
        return self._expand(_c(self.B)[0])

    def _C(self) -> torch.Tensor:
        return _c(self.C)[0]  # (H, N/2)

    # -- the block ---------------------------------------------------------------------------------

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        """Channel dropout: with ``tie_dropout`` one mask per (sequence, channel), shared over L
        (the S4 code's DropoutNd)."""
        if not self.training or self.dropout == 0.0:
            return y
        if not self.tie_dropout:
            return F.dropout(y, self.dropout, training=True)
        keep = torch.rand(y.shape[0], 1, y.shape[2], device=y.device) >= self.dropout
        return y * keep.to(y.dtype) / (1 - self.dropout)

    def forward(self, x: torch.Tensor, state: S4State | None = None
                ) -> tuple[torch.Tensor, S4State | None]:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ValueError(f"expected x of shape (B, L, {self.d}), got {tuple(x.shape)}")
        u = x.transpose(1, 2).float()  # (B, H, L); the SSM runs in fp32 (FFTs, complex)
        if state is None:
            y, new_state = fft_conv(u, self.kernel(u.shape[-1])), None
        else:
            x0 = torch.view_as_complex(state.ssm.float().contiguous())  # (B, H, N/2)
            y, x_new = self._stream(u, x0)
            new_state = S4State(_r(x_new).to(state.ssm.dtype))
        y = y + self.D.float()[0, :, None] * u  # D skip
        y = y.transpose(1, 2).to(x.dtype)  # (B, L, H)
        # FFTConv's dropout, then S4Block's GELU, dropout and output linear + GLU
        y = self._drop(F.gelu(self._drop(y)))
        return F.glu(self.output_linear(y), dim=-1), new_state

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> S4State:
        dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        return S4State(torch.zeros(batch_size, self.d, self.d_state // 2, 2, device=device,
                                   dtype=dtype))

    def state_size(self, seq_len: int) -> int:
        return self.d * self.d_state  # N/2 complex = N floats per channel, whatever seq_len

    def kernel(self, L: int) -> torch.Tensor:  # (H, L)
        raise NotImplementedError

    def _stream(self, u: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class S4D(_SSMMixer):
    """S4D: a diagonal state space per channel; Vandermonde kernel, FFT convolution."""

    variants: ClassVar[dict[str, dict]] = {
        "default": {},
        "lin_bilinear": {"init": "lin", "disc": "bilinear", "d_state": 16},
        "inv": {"init": "inv", "n_ssm": None, "d_state": 8},
        "real": {"init": "real", "n_ssm": 4},
    }

    def __init__(self, d: int, *, d_state: int = 64, init: str = "legs", disc: str = "zoh",
                 dt_min: float = 0.001, dt_max: float = 0.1, n_ssm: int | None = 1,
                 dropout: float = 0.0, tie_dropout: bool = True, lr: float | None = 0.001,
                 lr_dt: float | None = 0.001, lr_C: float | None = None) -> None:
        super().__init__()
        if init not in DIAG_INITS:
            raise ValueError(f"init must be one of {DIAG_INITS}, got {init!r}")
        if disc not in ("zoh", "bilinear"):
            raise ValueError(f"disc must be 'zoh' or 'bilinear', got {disc!r}")
        self.init, self.disc = init, disc
        _check_d_state(d_state)
        A, B = diag_init(init, d_state)
        self._setup(d, d_state, dt_min, dt_max, n_ssm, dropout, tie_dropout, lr, lr_dt, lr_C,
                    A, B)

    def kernel(self, L: int) -> torch.Tensor:
        return s4d_kernel(self._dt(), self._A(), self._B(), self._C(), L, self.disc)

    def _stream(self, u: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dA, dB = discretize_diag(self._dt(), self._A(), self._B(), self.disc)
        n = u.shape[-1]
        k = self.kernel(n) if n > 1 else None  # the parallel path's kernel, for consistency
        return ssm_conv(u, dA, dB, 2 * self._C(), x0, kernel=k)  # 2·: conjugate pairs


class S4(_SSMMixer):
    """S4: A = Λ − P P* (HiPPO-LegS in NPLR form); Cauchy + Woodbury kernel, FFT convolution."""

    variants: ClassVar[dict[str, dict]] = {
        "default": {},
        "short_lmax": {"d_state": 16, "l_max": 16, "n_ssm": None},  # L=37 > l_max: doubling
    }

    def __init__(self, d: int, *, d_state: int = 64, l_max: int = 1024, dt_min: float = 0.001,
                 dt_max: float = 0.1, n_ssm: int | None = 1, dropout: float = 0.0,
                 tie_dropout: bool = True, lr: float | None = 0.001,
                 lr_dt: float | None = 0.001, lr_C: float | None = None) -> None:
        super().__init__()
        if l_max < 1:
            raise ValueError(f"l_max must be >= 1, got {l_max}")
        self.l_max = l_max
        _check_d_state(d_state)
        Lam, P, B, _ = nplr_legs(d_state)
        self._setup(d, d_state, dt_min, dt_max, n_ssm, dropout, tie_dropout, lr, lr_dt, lr_C,
                    Lam, B)
        self.P = nn.Parameter(_r(P.to(torch.complex64).repeat(1, self.n_ssm, 1)))
        tag(self.P, lr=lr, weight_decay=0.0)
        with torch.no_grad():  # learn C̃ = (I − Ā^{l_max})ᵀ C for a random C, as the S4 code
            dA, _ = self._discrete(torch.float64)
            c = to_real(2 * self._C().conj()).double()  # C's output row in real coordinates
            c = c - torch.einsum("hn,hnm->hm", c, torch.linalg.matrix_power(dA, l_max))
            self.C.copy_(_r(from_real(c / 2).conj()[None].to(torch.complex64)))
        self._cache: tuple | None = None

    def _P(self) -> torch.Tensor:
        return self._expand(_c(self.P)[0])

    def _discrete(self, dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense bilinear Ā (H, N, N), B̄ (H, N) in real coordinates, in ``dtype``."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return discretize_dplr(self._dt().to(dtype), self._A().to(cdtype), self._P().to(cdtype),
                               self._B().to(cdtype))

    def kernel(self, L: int) -> torch.Tensor:
        dt, Lam, P, B, Ct = self._dt(), self._A(), self._P(), self._B(), self._C()
        Lk = self.l_max
        if Lk < L:  # extend C̃ from l_max to l_max·2^k >= L: (I − Ā^{2l}) = (I − Ā^l)(I + Ā^l)
            dA, _ = self._discrete()
            Al, c = torch.linalg.matrix_power(dA, Lk), to_real(2 * Ct.conj())
            while Lk < L:
                c = c + torch.einsum("hn,hnm->hm", c, Al)
                Al, Lk = Al @ Al, 2 * Lk
            Ct = from_real(c / 2).conj()
        return s4_kernel(dt, Lam, P, B, Ct, Lk)[:, :L]

    def _recurrent_form(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense Ā, B̄ and the true output row (real coordinates, fp32): C = (I − Ā^{l_max})⁻ᵀ C̃.

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
        rec = (dA.float(), dB.float(), dC.float())
        if not torch.is_grad_enabled():
            self._cache = (key, rec)
        return rec

    def _stream(self, u: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dA, dB, dC = self._recurrent_form()
        if u.shape[-1] == 1:  # decoding: the O(N) DPLR step (Theorem 2), then y = C·x
            x = dplr_step(x0, u[..., 0], self._dt(), self._A(), self._P(), self._B())
            return (dC * to_real(x)).sum(-1)[..., None], x
        y, r = ssm_conv(u, dA, dB, dC, to_real(x0), kernel=self.kernel(u.shape[-1]))
        return y, from_real(r)


__all__ = ["S4", "S4D", "S4State"]
