"""A linear time-invariant SSM as a causal convolution: its filter, and the op ``ssm_conv``.

An SSM x_k = Ā x_{k-1} + B̄ u_k, y_k = Re(C x_k) (built and discretised in :mod:`lrm.ops.hippo`)
is linear and time invariant, so its output is a causal convolution with the **SSM filter**

    K_ℓ = Re(C Ā^ℓ B̄),   ℓ = 0..L-1,      y = K ∗ u (+ D u, added by the mixer).

(The S4 papers call K the "SSM convolution kernel"; in lrm "kernel" means a CUDA/Triton kernel
package, so here K is the filter and its L entries are its taps.)

This file computes K without stepping the recurrence, then convolves by FFT:

- **S4D filter** (``s4d_filter``, diagonal A): a Vandermonde product,
  K_ℓ = 2 Re Σ_n C_n B̄_n Ā_n^ℓ, with Ā_n^ℓ = exp(ℓ log Ā_n).
- **S4 filter** (``s4_filter``, A = Λ − P Q*, Q = conj P): the truncated generating function
  K̂(ω) = Σ_{ℓ<L} K_ℓ ω^ℓ at the L roots of unity ω_j = exp(−2πij/L), which for the bilinear
  discretisation is a Cauchy kernel plus a rank-one Woodbury correction (S4 paper, Algorithm 1),
  then an inverse FFT. The truncation to L taps enters as C̃ = (I − Ā^L)ᵀ C.
- **FFT convolution** (``fft_conv``) of length 2L, so nothing wraps around.
- The op ``ssm_conv`` (with ``ssm_conv_recurrent_ref``, the oracle, and ``ssm_conv_ref``): the
  discretised SSM over a chunk of inputs *with an initial state*, as filter convolution + the
  state's own contribution C Ā^{t+1} x₀ + the final state. This is how a streamed chunk
  continues exactly from the state the previous chunk left behind.

``ssm_conv*`` output y = Re(Σ_n dC_n x_n): pass dC = 2C for a half-basis diagonal system and the
real dC = to_real(2 conj C) for the dense one. Everything follows the dtype of its inputs
(float64 and complex128 stay so; constants such as the roots of unity are built in float64 and
cast to it).

Memory. Neither filter builds the (H, N, L) matrix of its naive form. The Vandermonde product
factors ℓ = cT + t (T = ⌈√L⌉) into a batched matrix product over (H, N, √L) powers. The Cauchy
sum has no such factorisation: it is evaluated in chunks of frequency nodes of at most
``CHUNK_ELEMENTS`` entries, each recomputed in the backward pass (activation checkpointing),
which is what the paper's pykeops/CUDA kernels achieve by fusion. pykeops and the CUDA extension
of state-spaces/s4 are not used.

Symbols: B batch, H channels, N state size (d_state), L length, J = ⌊L/2⌋ + 1 frequency nodes.
Facts from the S4 and S4D papers and state-spaces/s4 (see :mod:`lrm.ops.hippo`); re-derived.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lrm.ops import _kernels
from lrm.ops.hippo import conj_full, discretize_diag

CHUNK_ELEMENTS = 1 << 20  # largest (…, N, chunk) complex intermediate of the Cauchy sum (8 MB)
DENSE_BLOCK = 64  # time block of the dense (DPLR) streaming path

# ----------------------------------------------------------------------------- chunked sums


def _chunked(fn, n: int, chunk: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """[fn(start, stop, *tensors) for each chunk of range(n)], recomputing each chunk in the
    backward pass when there is more than one (so autograd does not keep every chunk's
    (…, N, chunk) intermediate alive)."""
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if len(bounds) == 1 or not grad:
        return [fn(s, e, *tensors) for s, e in bounds]
    return [checkpoint(fn, s, e, *tensors, use_reentrant=False) for s, e in bounds]


def _chunk_len(*shape: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, math.prod(shape)))


def _powers(log_z: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two-level powers of z for ℓ = cT + t < L: z^t (…, N, T) and z^{cT} (…, N, ⌈L/T⌉)."""
    T = math.isqrt(L - 1) + 1 if L > 1 else 1  # ⌈√L⌉
    t = torch.arange(T, device=log_z.device, dtype=log_z.real.dtype)
    c = torch.arange(-(-L // T), device=log_z.device, dtype=log_z.real.dtype) * T
    return torch.exp(log_z[..., None] * t), torch.exp(log_z[..., None] * c), T


def vandermonde(v: torch.Tensor, log_z: torch.Tensor, L: int) -> torch.Tensor:
    """Re Σ_n v_n z_n^ℓ for ℓ = 0..L−1: v (..., H, N), log_z (H, N) -> (..., H, L) real.

    The S4 code's "log-Vandermonde" product (powers as exp(ℓ log z)), factored in two levels:
    with ℓ = cT + t and T = ⌈√L⌉, z^ℓ = z^{cT} z^t, so

        K[c, t] = Re Σ_n (v_n z_n^{cT}) · z_n^t            (a batched matrix product)

    which needs only (…, N, √L) powers instead of the (H, N, L) Vandermonde matrix.
    """
    Zt, Zc, _ = _powers(log_z, L)  # (H, N, T), (H, N, L/T)
    K = (v[..., None] * Zc).transpose(-1, -2) @ Zt  # (..., H, L/T, N) @ (H, N, T)
    return K.real.flatten(-2)[..., :L]


def vandermonde_transpose(u: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """Σ_ℓ u_ℓ z_n^ℓ: u (B, H, L) real, log_z (H, N) -> (B, H, N) complex.

    The state a diagonal SSM reaches from the inputs u read in reverse order. Same two-level
    factorisation as :func:`vandermonde`: Σ_c z^{cT} Σ_t u_{cT+t} z^t.
    """
    L = u.shape[-1]
    Zt, Zc, T = _powers(log_z, L)
    U = F.pad(u, (0, Zc.shape[-1] * T - L)).unflatten(-1, (-1, T))  # (B, H, L/T, T)
    inner = U.to(Zt.dtype) @ Zt.transpose(-1, -2)  # (B, H, L/T, N)
    return torch.einsum("bhcn,hnc->bhn", inner, Zc)


def cauchy(v: torch.Tensor, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_n v_n / (a_j − b_j w_n) over conjugate pairs: v (..., H, N/2), w (H, N/2), a, b (J,)
    -> (..., H, J).

    With a = g(ω), b = 1 this is the Cauchy kernel Σ_n v_n / (g(ω) − w_n) of the S4 paper;
    the half basis is doubled with [v, conj v], [w, conj w] (a and b are complex, so the pair
    does not collapse to 2 Re). Chunked over the nodes j.
    """
    vf, wf = conj_full(v), conj_full(w)

    def part(s: int, e: int, vf: torch.Tensor, wf: torch.Tensor, a: torch.Tensor,
             b: torch.Tensor) -> torch.Tensor:
        R = 1 / (a[s:e] - b[s:e] * wf[..., None])  # (H, N, chunk)
        return torch.einsum("...hn,hnj->...hj", vf, R)

    parts = _chunked(part, a.shape[-1], _chunk_len(*wf.shape), vf, wf, a, b)
    return torch.cat(parts, dim=-1)


# ----------------------------------------------------------------------------- SSM filters


def s4d_filter(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, L: int,
               method: str = "zoh") -> torch.Tensor:
    """The S4D filter (Vandermonde): K_ℓ = 2 Re Σ_n C_n B̄_n Ā_n^ℓ.

    dt (H, 1); A, B, C (H, N/2) complex (half basis) -> K (H, L) real.
    """
    dA, dB = discretize_diag(dt, A, B, method)
    log_dA = dt * A if method == "zoh" else torch.log(dA)  # exp(ℓ log Ā) = Ā^ℓ
    return vandermonde(2 * C * dB, log_dA, L)  # 2·: the conjugate pair of every mode


def s4_filter(dt: torch.Tensor, Lam: torch.Tensor, P: torch.Tensor, B: torch.Tensor,
              C_tilde: torch.Tensor, L: int) -> torch.Tensor:
    """The S4 filter (DPLR, bilinear): Cauchy kernel + Woodbury, then inverse FFT.

    The truncated generating function at the L roots of unity ω_j = exp(−2πij/L) is

        K̂(ω) = Σ_{ℓ<L} K_ℓ ω^ℓ = C̃ᵀ (I − Ā ω)⁻¹ B̄,   C̃ᵀ = Cᵀ (I − Ā^L)   (ω^L = 1)

    and for the bilinear Ā, B̄ (S4 paper, Algorithm 1, with g(ω) = (2/Δ)(1−ω)/(1+ω))

        K̂(ω) = 2/(1+ω) · C̃ᵀ (g(ω) − Λ + P Q*)⁻¹ B
              = 2/(1+ω) · [k_{C̃B} − k_{C̃P} (1 + k_{QP})⁻¹ k_{QB}],   k_{xy} = Σ_n x_n y_n/(g − λ_n).

    We evaluate the same expression multiplied through by (1+ω)Δ/2, i.e. with denominators
    (1−ω) − (1+ω)Δλ_n/2, which are finite at ω = −1 (the Nyquist node of an even L, where
    g(ω) has a pole). ``C_tilde`` is C̃ (the S4 code learns C̃ directly for a fixed length).

    dt (H, 1); Lam, P, B, C_tilde (H, N/2) complex (half basis) -> K (H, L) real.
    """
    J = L // 2 + 1  # rfft nodes
    omega = torch.exp(-2j * math.pi * torch.arange(J, dtype=torch.float64) / L)
    omega = omega.to(device=Lam.device, dtype=Lam.dtype)
    a, b = 1 - omega, 1 + omega
    Q = P.conj()
    v = torch.stack([C_tilde * B, C_tilde * P, Q * B, Q * P])  # (4, H, N/2)
    k_CB, k_CP, k_QB, k_QP = cauchy(v, dt * Lam / 2, a, b)  # each (H, J)
    s = b * dt / 2  # (H, J): the factor (1+ω)Δ/2 that multiplies the low-rank term
    K_hat = dt * (k_CB - s * k_CP * k_QB / (1 + s * k_QP))  # Woodbury, rank one
    return torch.fft.irfft(K_hat, n=L)


def fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_t = Σ_{j≤t} k_{t−j} u_j by FFT of length 2L (no circular wrap).

    u (B, H, L), k (H, L) -> (B, H, L).
    """
    L = u.shape[-1]
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)
    return y[..., :L]


# ----------------------------------------------------------------------------- the op: ssm_conv


def _check(u: torch.Tensor, dA: torch.Tensor, dB: torch.Tensor, dC: torch.Tensor,
           initial_state: torch.Tensor | None) -> None:
    H, N = dB.shape
    if u.dim() != 3 or u.shape[1] != H or dC.shape != (H, N) or dA.shape not in ((H, N),
                                                                                 (H, N, N)):
        raise ValueError(f"ssm_conv expects u (B, H, L), dA (H, N) or (H, N, N), dB and dC "
                         f"(H, N); got {tuple(u.shape)}, {tuple(dA.shape)}, {tuple(dB.shape)}, "
                         f"{tuple(dC.shape)}")
    if initial_state is not None and initial_state.shape != (u.shape[0], H, N):
        raise ValueError(f"initial_state must be (B, H, N) = {(u.shape[0], H, N)}, got "
                         f"{tuple(initial_state.shape)}")


def _re(z: torch.Tensor) -> torch.Tensor:
    return z.real if z.is_complex() else z


def ssm_conv_recurrent_ref(u: torch.Tensor, dA: torch.Tensor, dB: torch.Tensor,
                           dC: torch.Tensor, initial_state: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The discretised SSM step by step (the oracle).

        x_t = Ā x_{t−1} + B̄ u_t,   y_t = Re(Σ_n dC_n x_t[n])

    u (B, H, L) real; dA (H, N) complex diagonal, or (H, N, N) dense (real or complex); dB, dC
    (H, N) of dA's dtype; initial_state (B, H, N) or None (zeros). Returns y (B, H, L) real and the
    final state.
    """
    _check(u, dA, dB, dC, initial_state)
    x = (u.new_zeros(u.shape[0], *dB.shape, dtype=dB.dtype) if initial_state is None
         else initial_state)
    ys = []
    for t in range(u.shape[-1]):
        Ax = dA * x if dA.dim() == 2 else torch.einsum("hmn,bhn->bhm", dA, x)
        x = Ax + dB * u[..., t, None]
        ys.append(_re((dC * x).sum(-1)))
    return torch.stack(ys, dim=-1), x


def _dense_blocks(dA: torch.Tensor, dB: torch.Tensor, dC: torch.Tensor, T: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a dense Ā, by doubling: W = [Ā^k B̄]_{k<T} (H, N, T), G = [dCᵀ Ā^{k+1}]_{k<T}
    (H, T, N), and Ā^T. log₂T matrix products instead of T sequential ones."""
    W, G, Ak = dB[..., None], (dC[:, None, :] @ dA), dA  # Ak = Ā^{current block size}
    while W.shape[-1] < T:
        W = torch.cat([W, Ak @ W], dim=-1)
        G = torch.cat([G, G @ Ak], dim=-2)
        Ak = Ak @ Ak
    if W.shape[-1] != T:
        Ak = torch.linalg.matrix_power(dA, T)
    return W[..., :T], G[:, :T], Ak


def ssm_filter(dA: torch.Tensor, dB: torch.Tensor, dC: torch.Tensor, L: int,
               block: int = DENSE_BLOCK) -> torch.Tensor:
    """K_ℓ = Re(dCᵀ Ā^ℓ B̄) for ℓ < L from a discretised SSM: (H, L).

    Diagonal Ā: a Vandermonde product. Dense Ā: blocks of T taps, K_{jT+k} = Re(c_jᵀ Ā^k B̄)
    with c_jᵀ = dCᵀ Ā^{jT}, so only (H, N, T) is held at a time.
    """
    if dA.dim() == 2:
        return vandermonde(dC * dB, torch.log(dA), L)
    T = min(block, L)
    W, _, AT = _dense_blocks(dA, dB, dC, T)
    c, ks = dC, []
    for s in range(0, L, T):
        ks.append(_re(torch.einsum("hn,hnk->hk", c, W[..., : min(T, L - s)])))
        c = torch.einsum("hn,hnm->hm", c, AT)  # cᵀ ← cᵀ Ā^T
    return torch.cat(ks, dim=-1)


def ssm_conv_ref(u: torch.Tensor, dA: torch.Tensor, dB: torch.Tensor, dC: torch.Tensor,
                 initial_state: torch.Tensor | None = None, *, taps: torch.Tensor | None = None,
                 block: int = DENSE_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The same SSM as :func:`ssm_conv_recurrent_ref`, without a loop over time steps.

    With x₀ the state before the chunk and n its length:

        y_t = (K ∗ u)_t + Re(dCᵀ Ā^{t+1} x₀)                   (zero-state + free response)
        x_n = Ā^n x₀ + Σ_j Ā^{n−1−j} B̄ u_j                     (the state handed on)

    K is ``taps`` (H, ≥n) if given (e.g. from :func:`s4_filter`, the same system), else
    :func:`ssm_filter`. Diagonal Ā: the free response is a Vandermonde product and the final
    state a transposed one. Dense Ā: both run over time blocks of ``block`` steps with
    precomputed Ā^k B̄ and dCᵀĀ^{k+1} (k < block), never holding (B, H, N, n).
    """
    _check(u, dA, dB, dC, initial_state)
    Bsz, H, n = u.shape
    N = dB.shape[-1]
    x0 = u.new_zeros(Bsz, H, N, dtype=dB.dtype) if initial_state is None else initial_state
    if n == 1:  # one recurrence step is the cheapest exact answer
        Ax = dA * x0 if dA.dim() == 2 else torch.einsum("hmn,bhn->bhm", dA, x0)
        x = Ax + dB * u
        return _re((dC * x).sum(-1))[..., None], x
    k = ssm_filter(dA, dB, dC, n, block) if taps is None else taps[..., :n]
    y = fft_conv(u, k.to(u.dtype))
    if dA.dim() == 2:  # diagonal: Vandermonde products
        log_dA = torch.log(dA)
        y = y + vandermonde(dC * dA * x0, log_dA, n)  # Re Σ dC Ā^{t+1} x₀
        x = torch.exp(n * log_dA) * x0 + dB * vandermonde_transpose(u.flip(-1), log_dA)
        return y, x
    T = min(block, n)
    W, G, AT = _dense_blocks(dA, dB, dC, T)
    free, z, x = [], x0, x0  # z: the free evolution Ā^{jT} x₀ of the initial state
    for s in range(0, n, T):
        m = min(T, n - s)
        free.append(_re(torch.einsum("htn,bhn->bht", G[:, :m], z)))
        z = torch.einsum("hmn,bhn->bhm", AT, z)
        Am = AT if m == T else torch.linalg.matrix_power(dA, m)
        x = (torch.einsum("hmn,bhn->bhm", Am, x)
             + torch.einsum("hnk,bhk->bhn", W[..., :m].flip(-1), u[..., s:s + m].to(W.dtype)))
    return y + torch.cat(free, dim=-1), x


def ssm_conv(u: torch.Tensor, dA: torch.Tensor, dB: torch.Tensor, dC: torch.Tensor,
             initial_state: torch.Tensor | None = None, *, taps: torch.Tensor | None = None,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatching :func:`ssm_conv_ref`. No kernel package serves it (the S4 repository's
    Cauchy/Vandermonde CUDA extension and pykeops are not wired in), so ``auto`` and ``ref``
    run the reference and ``kernel`` raises."""
    if _kernels.resolve_backend(backend) == "kernel":
        raise RuntimeError("ssm_conv: backend='kernel' was requested but no kernel package "
                           "serves it; use backend='auto' (the PyTorch reference).")
    return ssm_conv_ref(u, dA, dB, dC, initial_state, taps=taps)


__all__ = [
    "fft_conv",
    "s4_filter",
    "s4d_filter",
    "ssm_conv",
    "ssm_conv_recurrent_ref",
    "ssm_conv_ref",
    "ssm_filter",
    "vandermonde",
    "vandermonde_transpose",
]
