"""The S4D mixer (lrm.mixers.s4d) against the paper's equations; its options and model-level
checks shared with S4 are in test_s4.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import close, inputs, linear, prepare
from contract_cases import CASES

from lrm.mixers.s4d import S4D

# ----------------------------------------------------------------------------- S4D and S4


def _complex(p: torch.Tensor) -> torch.Tensor:
    """(..., 2) stored as (re, im) -> complex."""
    return torch.complex(p[..., 0], p[..., 1])


def _ssm_block(m, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y (B, L, H) of the SSMs -> the S4 block: + D u, GELU, Linear H -> 2H, GLU."""
    y = y + m.D[0] * u
    a, b = linear(m.output_linear, F.gelu(y)).chunk(2, dim=-1)
    return a * torch.sigmoid(b)


def s4d_equations(m: S4D, u: torch.Tensor) -> torch.Tensor:
    """S4D (Gu et al., 2022), per channel h, N/2 complex modes and their implied conjugates:
    x_k = Ā x_{k−1} + B̄ u_k, y_k = 2 Re(C x_k) + D u_k with ZOH (Ā = exp(ΔA),
    B̄ = (exp(ΔA) − 1)/A · B) or bilinear (Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = ΔB/(1 − ΔA/2));
    A = −exp(A_real) − i A_imag, Δ = softplus(inv_dt); channel h uses SSM copy h mod n_ssm."""
    Bsz, L, H = u.shape
    copy = torch.arange(H) % m.n_ssm
    dt = F.softplus(m.inv_dt[:, 0])[:, None]  # (H, 1)
    A = torch.complex(-torch.exp(m.A_real), -m.A_imag)[copy]  # (H, N/2)
    Bm = _complex(m.B[0])[copy]
    C = _complex(m.C[0])
    if m.disc == "zoh":
        dA = torch.exp(dt * A)
        dB = (dA - 1) / A * Bm
    else:
        dA = (1 + dt * A / 2) / (1 - dt * A / 2)
        dB = dt * Bm / (1 - dt * A / 2)
    x = torch.zeros(Bsz, H, m.d_state // 2, dtype=torch.complex128)
    ys = []
    for t in range(L):
        x = dA * x + dB * u[:, t, :, None]
        ys.append(2 * (C * x).sum(-1).real)
    return _ssm_block(m, u, torch.stack(ys, 1))


S4D_OPTIONS = {**CASES["s4d"], "legs_bilinear": {"disc": "bilinear", "d_state": 8}}


@pytest.mark.parametrize("kw", S4D_OPTIONS.values(), ids=S4D_OPTIONS.keys())
def test_s4d_follows_the_paper(kw):
    m = prepare(S4D(16, **kw))
    u = inputs(d=16)
    with torch.no_grad():
        close(m(u)[0], s4d_equations(m, u))
