"""Linear time-invariant state spaces: HiPPO, discretisation, convolution kernels (S4, S4D).

A state space model (SSM) with state size N, one per channel h = 1..H::

    x'(t) = A x(t) + B u(t),    y(t) = C x(t) + D u(t)          (continuous time)
    x_k = Ā x_{k-1} + B̄ u_k,    y_k = C x_k + D u_k            (after discretising with step Δ)

is linear and time invariant, so its output is a causal convolution with the kernel

    K_ℓ = C Ā^ℓ B̄,   ℓ = 0..L-1,      y = K ∗ u + D u.

This file computes K without ever stepping the recurrence, then convolves by FFT:

- **HiPPO-LegS** (``hippo_legs``) and its **NPLR** form (``nplr_legs``): A = V (Λ − P P*) V*
  with V unitary, Λ diagonal (Re Λ = −½), P a vector; computed once, in float64.
- **Discretisation**: zero-order hold (ZOH) Ā = exp(ΔA), B̄ = (exp(ΔA) − I) A⁻¹ B; bilinear
  Ā = (I − ΔA/2)⁻¹ (I + ΔA/2), B̄ = (I − ΔA/2)⁻¹ Δ B (``discretize_diag``,
  ``discretize_dplr``).
- **S4D kernel** (``s4d_kernel``, diagonal A): a Vandermonde product,
  K_ℓ = 2 Re Σ_n C_n B̄_n Ā_n^ℓ, with Ā_n^ℓ = exp(ℓ log Ā_n).
- **S4 kernel** (``s4_kernel``, A = Λ − P Q*, Q = conj P): the truncated generating function
  K̂(ω) = Σ_{ℓ<L} K_ℓ ω^ℓ at the L roots of unity ω_j = exp(−2πij/L), which for the bilinear
  discretisation is a Cauchy kernel plus a rank-one Woodbury correction (S4 paper, Algorithm 1),
  then an inverse FFT. The truncation to L taps enters as C̃ = (I − Ā^L)ᵀ C.
- **FFT convolution** (``fft_conv``) of length 2L, so nothing wraps around.
- The op ``ssm_conv`` (with ``ssm_conv_recurrent_ref``, the oracle, and ``ssm_conv_ref``): the
  discretised SSM over a chunk of inputs *with an initial state*, as kernel convolution + the
  state's own contribution C Ā^{t+1} x₀ + the final state. This is how a streamed chunk
  continues exactly from the state the previous chunk left behind.
- ``dplr_step``: one bilinear recurrence step in O(N) for A = Λ − P Q* (S4 paper, Theorem 2).

Conventions. Complex SSMs come in conjugate pairs, so only N/2 modes are stored ("half basis"):
a real signal through modes (λ, conj λ) gives 2 Re(...) of the first. The dense form of a DPLR
system is written in real coordinates r = [Re x, Im x] (N reals; ``dplr_real``), where it is an
ordinary real SSM. ``ssm_conv*`` output y = Re(Σ_n dC_n x_n): pass dC = 2C for a half-basis
diagonal system and the real dC = to_real(2 conj C) for the dense one.

Memory. Neither kernel builds the (H, N, L) matrix of its naive form. The Vandermonde product
factors ℓ = cT + t (T = ⌈√L⌉) into a batched matrix product over (H, N, √L) powers. The Cauchy
sum has no such factorisation: it is evaluated in chunks of frequency nodes of at most
``CHUNK_ELEMENTS`` entries, each recomputed in the backward pass (activation checkpointing),
which is what the paper's pykeops/CUDA kernels achieve by fusion. pykeops and the CUDA extension
of state-spaces/s4 are not used.

Symbols: B batch, H channels, N state size (d_state), L length, J = ⌊L/2⌋ + 1 frequency nodes.
Facts from Gu, Goel & Ré (2022), "Efficiently Modeling Long Sequences with Structured State
Spaces" (S4), Gu et al. (2022), "On the Parameterization and Initialization of Diagonal State
Space Models" (S4D), and state-spaces/s4 (models/s4/s4.py); re-derived, not copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lrm.ops import _kernels

CHUNK_ELEMENTS = 1 << 20  # largest (…, N, chunk) complex intermediate of the Cauchy sum (8 MB)
DENSE_BLOCK = 64  # time block of the dense (DPLR) streaming path

# ----------------------------------------------------------------------------- HiPPO


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO-LegS matrices (float64): A (N, N), B (N,).

    A_nk = −√(2n+1)√(2k+1) if n > k,  −(n+1) if n = k,  0 if n < k;   B_n = √(2n+1).
    """
    q = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    A = -(r[:, None] * r[None, :]).tril(-1) - torch.diag(q + 1)
    return A, r.clone()


def nplr_legs(N: int, B_clip: float | None = 2.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The normal-plus-low-rank form of HiPPO-LegS, in float64: (Λ, P, B, V).

    With P_n = √(n + ½), A + P Pᵀ = −½ I + S where S is skew-symmetric, so it is normal and
    unitarily diagonalisable: A + P Pᵀ = V_f Λ_f V_f*. Hence A = V_f (Λ_f − P̃ P̃*) V_f* with
    P̃ = V_f* P. The eigenvalues come in conjugate pairs; we keep the N/2 with negative
    imaginary part (V: (N, N/2)), and map B and P into that basis (B̃ = V* B, P̃ = V* P).
    ``B_clip`` clips Im B̃ to ±B_clip, as the S4 code does for stability.

    Returns Λ (N/2,), P̃ (N/2,), B̃ (N/2,), all complex128, and V (N, N/2).
    """
    if N % 2:
        raise ValueError(f"d_state must be even (conjugate pairs), got {N}")
    A, B = hippo_legs(N)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    S = A + P[:, None] * P[None, :] + 0.5 * torch.eye(N, dtype=torch.float64)  # skew-symmetric
    # S = i·(Hermitian −iS): eigh of −iS gives the imaginary parts μ of S's eigenvalues iμ
    mu, V = torch.linalg.eigh(-1j * S.to(torch.complex128))
    Lam = -0.5 + 1j * mu
    order = torch.argsort(Lam.imag)[: N // 2]  # one of each conjugate pair: Im λ < 0
    Lam, V = Lam[order], V[:, order]
    Vh = V.conj().T
    B_t = Vh @ B.to(torch.complex128)
    P_t = Vh @ P.to(torch.complex128)
    if B_clip is not None:
        B_t = torch.complex(B_t.real, B_t.imag.clamp(-B_clip, B_clip))
    return Lam, P_t, B_t, V


DIAG_INITS = ("legs", "lin", "inv", "real")


def diag_init(init: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal A (N/2,) and B (N/2,), complex128, for the S4D initialisations.

    - ``legs``: A = Λ, the diagonal of HiPPO-LegS's NPLR form; B = its B̃ (S4D-LegS).
    - ``lin``:  A_n = −½ + iπn (S4D-Lin);  B = 1.
    - ``inv``:  A_n = −½ + i(N/π)(N/(2n+1) − 1) (S4D-Inv);  B = 1.
    - ``real``: A_n = −(n+1) (S4D-Real, the eigenvalues of HiPPO-LegS);  B = 1.
    (Imaginary parts are negative, as in state-spaces/s4: one of each conjugate pair.)
    """
    if N % 2:
        raise ValueError(f"d_state must be even (conjugate pairs), got {N}")
    n = torch.arange(N // 2, dtype=torch.float64)
    ones = torch.ones(N // 2, dtype=torch.complex128)
    if init == "legs":
        Lam, _, B, _ = nplr_legs(N)
        return Lam, B
    if init == "lin":
        return torch.complex(-0.5 * torch.ones_like(n), -math.pi * n), ones
    if init == "inv":
        imag = (N / math.pi) * (N / (2 * n + 1) - 1)
        return torch.complex(-0.5 * torch.ones_like(n), -imag), ones
    if init == "real":
        return torch.complex(-(n + 1), torch.zeros_like(n)), ones
    raise ValueError(f"init must be one of {DIAG_INITS}, got {init!r}")


# ----------------------------------------------------------------------------- discretisation


def discretize_diag(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, method: str = "zoh"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ā, B̄ for a diagonal A (elementwise). dt (H, 1), A and B (H, N) -> (H, N) each.

    zoh:      Ā = exp(ΔA),              B̄ = (exp(ΔA) − 1)/A · B
    bilinear: Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = Δ/(1 − ΔA/2) · B
    """
    dtA = dt * A
    if method == "zoh":
        dA = torch.exp(dtA)
        return dA, (dA - 1) / A * B
    if method == "bilinear":
        return (1 + dtA / 2) / (1 - dtA / 2), dt / (1 - dtA / 2) * B
    raise ValueError(f"discretisation must be 'zoh' or 'bilinear', got {method!r}")


def conj_full(x: torch.Tensor) -> torch.Tensor:
    """Half basis -> full basis: [x, conj x] along the last dim."""
    return torch.cat([x, x.conj()], dim=-1)


def dplr_dense(Lam: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The full-basis complex matrix A_f = diag(Λ_f) − P_f P_f* (Λ_f = [Λ, conj Λ], P_f likewise).

    Lam, P: (..., N/2) -> (..., N, N). This is the matrix that V_f = [V, conj V] maps back to
    HiPPO-LegS; for computing with, :func:`dplr_real` is the same operator on real coordinates.
    """
    Lf, Pf = conj_full(Lam), conj_full(P)
    return torch.diag_embed(Lf) - Pf[..., :, None] * Pf.conj()[..., None, :]


def to_real(x: torch.Tensor) -> torch.Tensor:
    """Half-basis complex (..., N/2) -> real coordinates [Re x, Im x] (..., N)."""
    return torch.cat([x.real, x.imag], dim=-1)


def from_real(r: torch.Tensor) -> torch.Tensor:
    """Real coordinates [Re x, Im x] (..., N) -> half-basis complex (..., N/2)."""
    h = r.shape[-1] // 2
    return torch.complex(r[..., :h], r[..., h:])


def dplr_real(Lam: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """A = Λ − P P* as a real (..., N, N) matrix acting on r = [Re x, Im x].

    Because the modes come in conjugate pairs, the SSM of a DPLR A is a real N-dimensional
    system in disguise. On the half-basis state x the full-basis A_f acts as
    x' = A₁₁ x + A₁₂ conj(x) with A₁₁ = diag(Λ) − P P^H and A₁₂ = −P Pᵀ (the pair's low-rank
    coupling), i.e. on r = [Re x, Im x]:

        [[Re(A₁₁ + A₁₂), Im(A₁₂ − A₁₁)],
         [Im(A₁₁ + A₁₂), Re(A₁₁ − A₁₂)]].
    """
    A11 = torch.diag_embed(Lam) - P[..., :, None] * P.conj()[..., None, :]
    A12 = -P[..., :, None] * P[..., None, :]
    top = torch.cat([(A11 + A12).real, (A12 - A11).imag], dim=-1)
    bottom = torch.cat([(A11 + A12).imag, (A11 - A12).real], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def discretize_dplr(dt: torch.Tensor, Lam: torch.Tensor, P: torch.Tensor, B: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear Ā (H, N, N) and B̄ (H, N) of A = Λ − P P*, dense, in real coordinates.

    Ā = (I − ΔA/2)⁻¹(I + ΔA/2), B̄ = (I − ΔA/2)⁻¹ΔB on r = [Re x, Im x] (:func:`dplr_real`).
    This is S4's recurrent form; the S4 code builds the same dense Ā (in the complex full basis)
    for its default 'dense' step mode. dt (H, 1); Lam, P, B (H, N/2). The output matrix of a
    half-basis C is ``to_real(2 * C.conj())``: y = 2 Re(Cᵀ x) = to_real(2 conj C)·r.
    """
    A = dplr_real(Lam, P)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = (dt / 2)[..., None]  # (H, 1, 1)
    M = eye - half * A  # I − ΔA/2
    dA = torch.linalg.solve(M, eye + half * A)
    dB = torch.linalg.solve(M, (dt * to_real(B))[..., None])[..., 0]
    return dA, dB


def dplr_step(x: torch.Tensor, u: torch.Tensor, dt: torch.Tensor, Lam: torch.Tensor,
              P: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """One bilinear step x ← Ā x + B̄ u for A = Λ − P Q* in O(N) (S4 paper, Theorem 2).

    Multiply the bilinear update by 2/Δ:  (2/Δ − A) x' = (2/Δ + A) x + 2 B u. With
    D = (2/Δ − Λ)⁻¹ (diagonal), Woodbury inverts the rank-one update:
    (2/Δ − Λ + P Q*)⁻¹ = D − D P (1 + Q* D P)⁻¹ Q* D. Every product with Q* is an inner product
    over the full basis, which for conjugate-symmetric vectors is 2 Re of the half-basis sum.

    x: (B, H, N/2) complex half-basis state; u: (B, H) real; dt (H, 1); Lam, P, B (H, N/2).
    """
    Q = P.conj()

    def q(v: torch.Tensor) -> torch.Tensor:  # Q_fᵀ v_f for conjugate-symmetric v_f, (..., 1)
        return 2 * (Q * v).sum(-1, keepdim=True).real

    r = (2 / dt + Lam) * x - P * q(x) + 2 * B * u[..., None]
    D = 1 / (2 / dt - Lam)
    Dr = D * r
    return Dr - D * P * q(Dr) / (1 + q(D * P))


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


# ----------------------------------------------------------------------------- kernels


def s4d_kernel(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, L: int,
               method: str = "zoh") -> torch.Tensor:
    """The S4D convolution kernel (Vandermonde): K_ℓ = 2 Re Σ_n C_n B̄_n Ā_n^ℓ.

    dt (H, 1); A, B, C (H, N/2) complex (half basis) -> K (H, L) real.
    """
    dA, dB = discretize_diag(dt, A, B, method)
    log_dA = dt * A if method == "zoh" else torch.log(dA)  # exp(ℓ log Ā) = Ā^ℓ
    return vandermonde(2 * C * dB, log_dA, L)  # 2·: the conjugate pair of every mode


def s4_kernel(dt: torch.Tensor, Lam: torch.Tensor, P: torch.Tensor, B: torch.Tensor,
              C_tilde: torch.Tensor, L: int) -> torch.Tensor:
    """The S4 convolution kernel (DPLR, bilinear): Cauchy kernel + Woodbury, then inverse FFT.

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
           state: torch.Tensor | None) -> None:
    H, N = dB.shape
    if u.dim() != 3 or u.shape[1] != H or dC.shape != (H, N) or dA.shape not in ((H, N),
                                                                                 (H, N, N)):
        raise ValueError(f"ssm_conv expects u (B, H, L), dA (H, N) or (H, N, N), dB and dC "
                         f"(H, N); got {tuple(u.shape)}, {tuple(dA.shape)}, {tuple(dB.shape)}, "
                         f"{tuple(dC.shape)}")
    if state is not None and state.shape != (u.shape[0], H, N):
        raise ValueError(f"state must be (B, H, N) = {(u.shape[0], H, N)}, got "
                         f"{tuple(state.shape)}")


def _re(z: torch.Tensor) -> torch.Tensor:
    return z.real if z.is_complex() else z


def ssm_conv_recurrent_ref(u: torch.Tensor, dA: torch.Tensor, dB: torch.Tensor,
                           dC: torch.Tensor, state: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The discretised SSM step by step (the oracle).

        x_t = Ā x_{t−1} + B̄ u_t,   y_t = Re(Σ_n dC_n x_t[n])

    u (B, H, L) real; dA (H, N) complex diagonal, or (H, N, N) dense (real or complex); dB, dC
    (H, N) of dA's dtype; state (B, H, N) or None (zeros). Returns y (B, H, L) real and the
    final state.
    """
    _check(u, dA, dB, dC, state)
    x = u.new_zeros(u.shape[0], *dB.shape, dtype=dB.dtype) if state is None else state
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


def ssm_kernel(dA: torch.Tensor, dB: torch.Tensor, dC: torch.Tensor, L: int,
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
                 state: torch.Tensor | None = None, *, kernel: torch.Tensor | None = None,
                 block: int = DENSE_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The same SSM as :func:`ssm_conv_recurrent_ref`, without a loop over time steps.

    With x₀ the state before the chunk and n its length:

        y_t = (K ∗ u)_t + Re(dCᵀ Ā^{t+1} x₀)                   (zero-state + free response)
        x_n = Ā^n x₀ + Σ_j Ā^{n−1−j} B̄ u_j                     (the state handed on)

    K is ``kernel`` (H, ≥n) if given (e.g. from :func:`s4_kernel`, the same system), else
    :func:`ssm_kernel`. Diagonal Ā: the free response is a Vandermonde product and the final
    state a transposed one. Dense Ā: both run over time blocks of ``block`` steps with
    precomputed Ā^k B̄ and dCᵀĀ^{k+1} (k < block), never holding (B, H, N, n).
    """
    _check(u, dA, dB, dC, state)
    Bsz, H, n = u.shape
    N = dB.shape[-1]
    x0 = u.new_zeros(Bsz, H, N, dtype=dB.dtype) if state is None else state
    if n == 1:  # one recurrence step is the cheapest exact answer
        Ax = dA * x0 if dA.dim() == 2 else torch.einsum("hmn,bhn->bhm", dA, x0)
        x = Ax + dB * u
        return _re((dC * x).sum(-1))[..., None], x
    k = ssm_kernel(dA, dB, dC, n, block) if kernel is None else kernel[..., :n]
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
             state: torch.Tensor | None = None, *, kernel: torch.Tensor | None = None,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatching :func:`ssm_conv_ref`. No kernel package serves it (the S4 repository's
    Cauchy/Vandermonde CUDA extension and pykeops are not wired in), so ``auto`` and ``ref``
    run the reference and ``kernel`` raises."""
    if _kernels.resolve_backend(backend) == "kernel":
        raise RuntimeError("ssm_conv: backend='kernel' was requested but no kernel package "
                           "serves it; use backend='auto' (the PyTorch reference).")
    return ssm_conv_ref(u, dA, dB, dC, state, kernel=kernel)


__all__ = [
    "DIAG_INITS",
    "conj_full",
    "diag_init",
    "discretize_diag",
    "discretize_dplr",
    "dplr_dense",
    "dplr_real",
    "dplr_step",
    "fft_conv",
    "from_real",
    "hippo_legs",
    "nplr_legs",
    "s4_kernel",
    "s4d_kernel",
    "ssm_conv",
    "ssm_conv_recurrent_ref",
    "ssm_conv_ref",
    "ssm_kernel",
    "to_real",
    "vandermonde",
    "vandermonde_transpose",
]
