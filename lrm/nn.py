"""Shared building blocks: norms, the short causal conv, the MLP, dt initialisation, tags.

Everything here is small on purpose; the mixers in ``lrm/mixers/`` read as their papers do
because the plumbing lives here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrm.dtypes import compute_dtype, upcast
from lrm.ops.causal_conv import causal_conv1d

# ----------------------------------------------------------------------------- parameter tags


def tag(param: nn.Parameter, *, weight_decay: float | None = None,
        lr: float | None = None) -> nn.Parameter:
    """Mark ``param`` for its own optimizer group (read by :func:`lrm.optim.param_groups`).

    SSM parameters (A, dt, B) use no weight decay and often a smaller learning rate, as the
    S4 and Mamba code bases do. The tag travels with the parameter, not with its name.
    """
    opts = dict(getattr(param, "_optim", {}))
    if weight_decay is not None:
        opts["weight_decay"] = weight_decay
    if lr is not None:
        opts["lr"] = lr
    param._optim = opts  # type: ignore[attr-defined]
    return param


# ----------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, computed in fp32 for stability."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm with a SiLU gate, as in Mamba-2 and Gated DeltaNet's output.

    ``norm_before_gate=True``: y = RMSNorm(x) · silu(z)   (Gated DeltaNet, fla's FusedRMSNormGated)
    ``norm_before_gate=False``: y = RMSNorm(x · silu(z))  (Mamba-2's RMSNormGated default)
    """

    def __init__(self, d: int, eps: float = 1e-5, norm_before_gate: bool = True) -> None:
        super().__init__(d, eps)
        self.norm_before_gate = norm_before_gate

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if z is None:
            return super().forward(x)
        if self.norm_before_gate:
            return (super().forward(x).float() * F.silu(z.float())).to(x.dtype)
        return super().forward((x.float() * F.silu(z.float())).to(x.dtype))


def make_norm(kind: str, d: int) -> nn.Module:
    """'rmsnorm' or 'layernorm'."""
    if kind == "rmsnorm":
        return RMSNorm(d)
    if kind == "layernorm":
        return nn.LayerNorm(d)
    raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {kind!r}")


# ----------------------------------------------------------------------------- short conv


class ShortConv(nn.Module):
    """Depthwise causal conv over (B, L, C) with a streaming state of the last W-1 inputs.

    Parameter names follow mamba-ssm (``conv1d.weight`` of shape (C, 1, W)), so reference
    weights copy straight in.
    """

    def __init__(self, channels: int, width: int = 4, *, bias: bool = True,
                 activation: str | None = "silu") -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"conv width must be >= 1, got {width}")
        self.channels, self.width, self.activation = channels, width, activation
        self.conv1d = nn.Conv1d(channels, channels, width, groups=channels, bias=bias,
                                padding=width - 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, L, C), state: (B, C, W-1) -> y (B, L, C), new state (B, C, W-1)."""
        y, new_state = causal_conv1d(
            x.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
            self.activation, state, backend=backend)
        return y.transpose(1, 2), new_state

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.channels, self.width - 1, device=device, dtype=dtype)


# ----------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """Position-wise feed-forward; ``glu=True`` gives SwiGLU (hidden = silu(W1 x) ⊙ W3 x)."""

    def __init__(self, d: int, ratio: float = 4.0, *, glu: bool = True, dropout: float = 0.0,
                 bias: bool = False) -> None:
        super().__init__()
        hidden = int(d * ratio * (2 / 3 if glu else 1))
        hidden = max(8, 8 * math.ceil(hidden / 8))  # round up to a multiple of 8
        self.glu = glu
        self.fc1 = nn.Linear(d, hidden * (2 if glu else 1), bias=bias)
        self.fc2 = nn.Linear(hidden, d, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.glu:
            a, b = h.chunk(2, dim=-1)
            h = F.silu(a) * b
        else:
            h = F.gelu(h)
        return self.fc2(self.drop(h))


# ----------------------------------------------------------------------------- dt init


def inv_softplus(x: torch.Tensor) -> torch.Tensor:
    """The inverse of softplus: log(exp(x) - 1), written stably."""
    return x + torch.log(-torch.expm1(-x))


def init_dt(n: int, dt_min: float = 1e-3, dt_max: float = 1e-1, *,
            floor: float = 1e-4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample n step sizes log-uniformly in [dt_min, dt_max] (clamped below at ``floor``).

    This is the S4/Mamba initialisation; Mamba stores ``inv_softplus(dt)`` as ``dt_proj.bias``
    (or ``dt_bias``) so that softplus(bias) = dt at initialisation.
    """
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
    u = torch.rand(n, generator=generator)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt.clamp(min=floor)


# ----------------------------------------------------------------------------- RoPE


def apply_rope(x: torch.Tensor, offset: int = 0, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al., 2021) on x: (B, H, L, Dh), positions offset..+L-1.

    Pairs are (i, i + Dh/2) ("rotate half", as in GPT-NeoX/LLaMA); Dh must be even. Computed
    on the fly in the compute dtype (fp32, or float64 for float64 input, so that a rotation at
    another offset is exact there too): it is cheap next to attention and needs no length limit.
    """
    Dh, L = x.shape[-1], x.shape[-2]
    if Dh % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {Dh}")
    dtype = compute_dtype(x)
    inv_freq = base ** (-torch.arange(0, Dh, 2, device=x.device, dtype=dtype) / Dh)
    pos = torch.arange(offset, offset + L, device=x.device, dtype=dtype)
    angles = pos[:, None] * inv_freq[None, :]  # (L, Dh/2)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = upcast(x, dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
