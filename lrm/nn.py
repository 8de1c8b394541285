"""Shared building blocks: norms, the short causal conv, the MLP, dt initialisation, RoPE, tags.

Everything here is small on purpose; the mixers in ``lrm/mixers/`` read as their papers do
because the plumbing lives here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
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
    """RMSNorm, optionally per group of channels and gated: the one norm of lrm's mixers.

        RMSNorm(x) = x / sqrt(mean_group(x²) + eps) · weight

    with the mean taken over each group of ``group_size`` consecutive channels (all d channels
    when ``group_size`` is None). Called with a gate z it is the gated norm of Mamba-2 and
    Gated DeltaNet:

        norm_before_gate=True:  y = RMSNorm(x) · silu(z)   (Gated DeltaNet; fla's FusedRMSNormGated)
        norm_before_gate=False: y = RMSNorm(x · silu(z))   (Mamba-2's RMSNormGated)

    Uses: ``RMSNorm(d)`` in the block and Titans' gate norms; per head (``group_size`` = head
    width) for FoX's QK- and output norms, Gated DeltaNet's and Titans' memory output norms;
    over the last axis of (…, heads, head width) tensors, gated, for Oryx's output norm; per
    group of heads sharing B and C for Mamba-2 (mamba-ssm's ``group_size``). Computed in
    promote(x dtype, float32) (:mod:`lrm.dtypes`), returned in x's dtype.
    """

    def __init__(self, d: int, eps: float = 1e-5, *, group_size: int | None = None,
                 norm_before_gate: bool = True) -> None:
        super().__init__()
        if group_size is not None and (group_size < 1 or d % group_size):
            raise ValueError(f"group_size={group_size} must divide d={d}")
        self.eps, self.group_size, self.norm_before_gate = eps, group_size or d, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = compute_dtype(x, z)
        xf = upcast(x, dtype)
        if z is not None and not self.norm_before_gate:
            xf = xf * F.silu(upcast(z, dtype))
        xg = rearrange(xf, "... (g c) -> ... g c", c=self.group_size)  # one row per group
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        y = rearrange(xg, "... g c -> ... (g c)") * upcast(self.weight, dtype)
        if z is not None and self.norm_before_gate:
            y = y * F.silu(upcast(z, dtype))
        return y.to(x.dtype)


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(Σx² + eps) over the last axis (fla's l2norm, for unit-norm queries and keys).
    Computed in promote(x dtype, float32) (:mod:`lrm.dtypes`), returned in x's dtype."""
    xf = upcast(x, compute_dtype(x))
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


NORMS = ("rmsnorm", "layernorm", "batchnorm")


class SequenceBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the d channels of a (B, L, d) input: while training, each channel is
    normalised with the mean and variance over the batch *and the positions*; in eval mode
    with running averages of them, so each position on its own.

    S4's LRA recipes normalise this way (BatchNorm in every block; state-spaces/s4
    ``configs/experiment/lra/*``). Two consequences the other norms do not have: while
    training, a token's output depends on every other token of the batch (so a causal
    language model would see the future through the statistics: :class:`lrm.ModelConfig`
    refuses ``norm="batchnorm"`` with ``head="lm"``), and the padding of variable-length
    batches enters the statistics (as in S4's code, which does not mask them either).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def make_norm(kind: str, d: int) -> nn.Module:
    """'rmsnorm', 'layernorm' or 'batchnorm' (:class:`SequenceBatchNorm`) over width d."""
    if kind == "rmsnorm":
        return RMSNorm(d)
    if kind == "layernorm":
        return nn.LayerNorm(d)
    if kind == "batchnorm":
        return SequenceBatchNorm(d)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


# ----------------------------------------------------------------------------- short conv


class ShortConv(nn.Conv1d):
    """Depthwise causal conv over (B, L, C) with a streaming state of the last W-1 inputs.

    An ``nn.Conv1d`` (C -> C, groups C, kernel W), so a mixer attribute named as upstream names
    it (mamba-ssm's ``conv1d``, fla's ``q_conv1d``) has upstream's parameter names and shapes
    (``conv1d.weight`` (C, 1, W), ``conv1d.bias`` (C,)) and reference weights copy straight in.
    ``forward`` is the causal conv of :func:`lrm.ops.causal_conv.causal_conv1d` (with the
    activation), not ``nn.Conv1d``'s padded one.
    """

    def __init__(self, channels: int, width: int = 4, *, bias: bool = True,
                 activation: str | None = "silu") -> None:
        if width < 1:
            raise ValueError(f"conv width must be >= 1, got {width}")
        super().__init__(channels, channels, width, groups=channels, bias=bias,
                         padding=width - 1)
        self.activation = activation

    @property
    def channels(self) -> int:
        return self.in_channels

    @property
    def width(self) -> int:
        return self.kernel_size[0]

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,  # type: ignore[override]
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, L, C), state: (B, C, W-1) -> y (B, L, C), new state (B, C, W-1)."""
        y, new_state = causal_conv1d(
            rearrange(x, "b l c -> b c l"), self.weight[:, 0], self.bias, self.activation,
            state, backend=backend)
        return rearrange(y, "b c l -> b l c"), new_state

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


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al., 2021) of x (..., L, Dh) at integer ``positions``
    (broadcastable to x.shape[:-1]; a stream at offset T passes ``T + arange(L)``).

    Pairs are (i, i + Dh/2) ("rotate half", as in GPT-NeoX/LLaMA); Dh must be even. Computed
    on the fly in promote(x dtype, float32) and returned in x's dtype: it is cheap next to
    attention and needs no length limit. The angles are formed in float64 (positions times
    frequencies lose digits in fp32 at large positions) and rounded once to the compute dtype.
    """
    Dh = x.shape[-1]
    if Dh % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {Dh}")
    dtype = compute_dtype(x)
    f64 = torch.float32 if x.device.type == "mps" else torch.float64  # no fp64 on MPS
    inv_freq = base ** (-torch.arange(0, Dh, 2, device=x.device, dtype=f64) / Dh)
    angles = positions.to(device=x.device, dtype=f64)[..., None] * inv_freq  # (..., L, Dh/2)
    cos, sin = upcast(angles.cos(), dtype), upcast(angles.sin(), dtype)
    x1, x2 = upcast(x, dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
