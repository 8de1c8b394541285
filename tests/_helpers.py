"""Helpers shared by several test modules (pytest puts tests/ on the import path)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def scan_inputs(form: str, with_state: bool, L: int = 37, b: int = 2, d: int = 8, n: int = 5,
                seed: int = 0):
    """Selective-scan inputs (u, Δ, A, B, C, D, z, Δ bias, h0), all requiring grad. ``form``:
    ``shared`` B/C (b, n, L), ``grouped`` (b, 2, n, L), or time-invariant (d, n)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).requires_grad_()

    u, delta = r(b, d, L), r(b, d, L)
    A = (-torch.rand(d, n, generator=g) * 4 - 0.1).requires_grad_()
    if form == "shared":
        B, C = r(b, n, L), r(b, n, L)
    elif form == "grouped":
        B, C = r(b, 2, n, L), r(b, 2, n, L)
    else:  # time-invariant
        B, C = r(d, n), r(d, n)
    D, z, bias = r(d), r(b, d, L), r(d)
    h0 = r(b, d, n) if with_state else None
    return u, delta, A, B, C, D, z, bias, h0


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op creates (forward or backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
