"""The S4D mixer (lrm.mixers.s4d) against the paper's equations; its options and model-level
checks shared with S4 are in test_s4.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import close, complex_pairs, inputs, prepare, ssm_block
from contract_cases import CASES

from lrm.mixers.s4d import S4D

# ----------------------------------------------------------------------------- S4D and S4


def s4d_equations(m: S4D, u: torch.Tensor) -> torch.Tensor:
    """S4D (Gu et al., 2022), per channel h, N/2 complex modes and their implied conjugates:
    x_k = Ā x_{k−1} + B̄ u_k, y_k = 2 Re(C x_k) + D u_k with ZOH (Ā = exp(ΔA),
    B̄ = (exp(ΔA) − 1)/A · B) or bilinear (Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = ΔB/(1 − ΔA/2));
    A = −exp(A_real) − i A_imag, Δ = softplus(inv_dt); channel h uses SSM copy h mod n_ssm."""
    Bsz, L, H = u.shape
    copy = torch.arange(H) % m.n_ssm
    dt = F.softplus(m.inv_dt[:, 0])[:, None]  # (H, 1)
    A = torch.complex(-torch.exp(m.A_real), -m.A_imag)[copy]  # (H, N/2)
    Bm = complex_pairs(m.B[0])[copy]
    C = complex_pairs(m.C[0])
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
    return ssm_block(m, u, torch.stack(ys, 1))


S4D_OPTIONS = {**CASES["s4d"], "legs_bilinear": {"disc": "bilinear", "d_state": 8}}


@pytest.mark.parametrize("kw", S4D_OPTIONS.values(), ids=S4D_OPTIONS.keys())
def test_s4d_follows_the_paper(kw):
    m = prepare(S4D(16, **kw))
    u = inputs(d=16)
    with torch.no_grad():
        close(m(u)[0], s4d_equations(m, u))
