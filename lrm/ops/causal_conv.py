"""Depthwise causal 1-D convolution: the short conv of Mamba, Mamba-2 and Gated DeltaNet.

    y[b, c, t] = act( bias[c] + Σ_{i=0..W-1} weight[c, i] · x[b, c, t - (W-1) + i] )

with x[b, c, t] = 0 for t < 0 (or taken from the carried ``initial_state`` when streaming).

Symbols: B batch, C channels, L length, W kernel width.
The state is the last W-1 inputs, ``(B, C, W-1)``, oldest first, in x's dtype; every tier
takes it as ``initial_state`` and always returns the final one (it costs nothing). The sum is
taken in promote(x dtype, float32) (:mod:`lrm.dtypes`) and y is returned in x's dtype.

Kernel: ``causal_conv1d_fn`` from the causal-conv1d package serves the full-sequence case for
widths 2..4, fp32/fp16/bf16, on CUDA. Streaming with a state and decoding use the reference,
which is a single small ``conv1d`` call and costs nothing worth a kernel launch per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrm.dtypes import compute_dtype, upcast
from lrm.ops import _kernels

_ACTIVATIONS = (None, "silu", "swish")


def _act(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return F.silu(y) if activation in ("silu", "swish") else y


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, C, L), weight: (C, W), initial_state: (B, C, W-1) or None (zeros)
    -> (y (B, C, L), final state (B, C, W-1))."""
    width = weight.shape[-1]
    dtype = compute_dtype(x, weight, bias)
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[1], width - 1)
    xs = torch.cat([initial_state.to(x.dtype), x], dim=-1)  # (B, C, W-1+L)
    y = F.conv1d(upcast(xs, dtype), upcast(weight, dtype).unsqueeze(1), upcast(bias, dtype),
                 groups=x.shape[1])  # (B, C, L)
    return _act(y, activation).to(x.dtype), xs[..., xs.shape[-1] - (width - 1):]


def causal_conv1d_recurrent_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same conv as a loop over time with a rolling window. The oracle for tests."""
    width = weight.shape[-1]
    dtype = compute_dtype(x, weight, bias)
    w, b = upcast(weight, dtype), upcast(bias, dtype)
    window = (x.new_zeros(x.shape[0], x.shape[1], width - 1) if initial_state is None
              else initial_state)
    window = window.to(x.dtype)
    ys = []
    for t in range(x.shape[-1]):
        window = torch.cat([window, x[..., t:t + 1]], dim=-1)  # (B, C, W)
        y = (upcast(window, dtype) * w).sum(-1)
        ys.append(y if b is None else y + b)
        window = window[..., 1:]
    return _act(torch.stack(ys, dim=-1), activation).to(x.dtype), window


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatching causal conv; same contract as :func:`causal_conv1d_ref`."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d expects x (B, C, L) and weight (C, W); "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    width = weight.shape[-1]
    ok = (initial_state is None and 2 <= width <= 4 and activation in (None, "silu", "swish")
          and x.dtype in (torch.float32, torch.float16, torch.bfloat16))
    if _kernels.use_kernel("causal_conv1d", backend, "causal_conv1d_fn", x, weight, bias,
                           supported=ok,
                           why_unsupported="the kernel serves widths 2..4, activation None or "
                                           "silu, without a state"):
        fn = _kernels.get("causal_conv1d_fn")
        channel_last_ok = x.stride(1) == 1 and x.stride(0) % 8 == 0 and x.stride(2) % 8 == 0
        if x.stride(-1) != 1 and not channel_last_ok:
            # a (B, L, C) view sliced out of a wider projection: the kernel reads a
            # channel-last layout only with 8-aligned strides (seen on an H200: it raises)
            x = x.contiguous()
        y = fn(x, weight, bias, activation="silu" if activation in ("silu", "swish") else None)
        pad = max(0, width - 1 - x.shape[-1])
        new_state = F.pad(x[..., -(width - 1):], (pad, 0))
        return y, new_state
    return causal_conv1d_ref(x, weight, bias, activation, initial_state)
