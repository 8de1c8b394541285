"""The compute-dtype rule, in one place.

Every op and mixer in lrm computes in ``promote(input dtype, float32)``:

- bfloat16 and float16 inputs are computed in float32 (scans, cumulative sums of log-decays
  and softmax normalisers lose too much in half precision), and the result is cast back;
- float32 stays float32;
- float64 stays float64, so that every op can be ``gradcheck``-ed and serve as an oracle.

Call :func:`compute_dtype` once per op with the tensors that carry data, and :func:`upcast`
to move tensors there. No op writes a bare ``.float()``.
"""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """``promote(dtype of the tensors, float32)``: float64 if any floating input is float64,
    else float32. ``None`` entries and integer tensors are ignored."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def upcast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in the compute dtype (a no-op when it is already there); ``None`` passes."""
    return None if t is None else t.to(dtype)


def promote(dtype: torch.dtype | None) -> torch.dtype:
    """The compute dtype for data of ``dtype`` (None: the default float32): what a mixer's
    ``init_state(dtype=...)`` uses for its recurrent state."""
    return torch.promote_types(dtype or torch.float32, torch.float32)


def complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype with ``dtype``'s precision: float64 -> complex128, else complex64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64
