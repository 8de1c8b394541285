"""HiPPO and the structured state matrices of S4 and S4D: construction and discretisation.

A state space model (SSM) with state size N, one per channel h = 1..H::

    x'(t) = A x(t) + B u(t),    y(t) = C x(t) + D u(t)          (continuous time)
    x_k = Ā x_{k-1} + B̄ u_k,    y_k = C x_k + D u_k            (after discretising with step Δ)

This file builds the matrices; :mod:`lrm.ops.ssm_conv` runs the SSM (as a convolution with its
filter K, or step by step).

- **HiPPO-LegS** (``hippo_legs``) and its **NPLR** form (``nplr_legs``): A = V (Λ − P P*) V*
  with V unitary, Λ diagonal (Re Λ = −½), P a vector; computed once, in float64.
- **S4D initialisations** (``diag_init``): LegS (the diagonal Λ of the NPLR form), Lin, Inv,
  Real; complex128.
- **Discretisation**: zero-order hold (ZOH) Ā = exp(ΔA), B̄ = (exp(ΔA) − I) A⁻¹ B; bilinear
  Ā = (I − ΔA/2)⁻¹ (I + ΔA/2), B̄ = (I − ΔA/2)⁻¹ Δ B (``discretize_diag``,
  ``discretize_dplr``). These follow the dtype of their inputs (complex128 for float64).
- **DPLR algebra**: the dense forms of A = Λ − P P* (``dplr_dense`` in the full complex basis,
  ``dplr_real`` in real coordinates) and ``dplr_step``, one bilinear recurrence step in O(N)
  (S4 paper, Theorem 2).

Conventions. Complex SSMs come in conjugate pairs, so only N/2 modes are stored ("half basis"):
a real signal through modes (λ, conj λ) gives 2 Re(...) of the first. The dense form of a DPLR
system is written in real coordinates r = [Re x, Im x] (N reals; ``dplr_real``), where it is an
ordinary real SSM.

Symbols: H channels, N state size (d_state), Δ the step of each channel (dt, (H, 1)).
Facts from Gu, Goel & Ré (2022), "Efficiently Modeling Long Sequences with Structured State
Spaces" (S4), Gu et al. (2022), "On the Parameterization and Initialization of Diagonal State
Space Models" (S4D), and state-spaces/s4 (models/s4/s4.py); re-derived, not copied.
"""

from __future__ import annotations

import math

import torch

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


__all__ = [
    "DIAG_INITS",
    "conj_full",
    "diag_init",
    "discretize_diag",
    "discretize_dplr",
    "dplr_dense",
    "dplr_real",
    "dplr_step",
    "from_real",
    "hippo_legs",
    "nplr_legs",
    "to_real",
]
