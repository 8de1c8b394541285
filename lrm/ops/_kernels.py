"""The only place in lrm that imports a kernel package.

Kernel packages (all optional, CUDA only):

- ``mamba_ssm``: selective scan (Mamba-1), SSD chunk scan (Mamba-2);
- ``causal_conv1d``: depthwise causal conv1d (full sequences; streaming uses the reference);
- ``fla`` (flash-linear-attention): gated delta rule, forgetting attention.

Imports are lazy and guarded: nothing is imported until a CUDA tensor asks for a kernel, and
any failure at import (released ``mamba_ssm`` raises without its compiled CUDA extension,
``fla`` needs triton) means "fall back to the pure-PyTorch reference", never a crash.

The backend rule, used by every op's dispatch function::

    backend="ref"     always the pure-PyTorch reference
    backend="kernel"  the kernel, or a RuntimeError that says why it cannot serve
    backend="auto"    the kernel when it imports, every tensor is on CUDA and the op says the
                      dtype/shape is supported; otherwise the reference

The environment variable ``LRM_BACKEND=ref`` (or ``kernel``) overrides ``auto`` everywhere,
which is how one runs a whole model on the references on a GPU machine.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

BACKENDS = ("auto", "ref", "kernel")

# name -> (package, module, attribute). One line per kernel function an op dispatches to; every
# entry is used (decoding runs on the references: one token costs less than a kernel launch).
_KERNELS: dict[str, tuple[str, str, str]] = {
    "selective_scan_fn": (
        "mamba_ssm", "mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "mamba_chunk_scan_combined": (
        "mamba_ssm", "mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d", "causal_conv1d_fn"),
    "chunk_gated_delta_rule": (
        "fla", "fla.ops.gated_delta_rule", "chunk_gated_delta_rule"),
    "fused_recurrent_gated_delta_rule": (
        "fla", "fla.ops.gated_delta_rule", "fused_recurrent_gated_delta_rule"),
    "chunk_gdn2": ("fla", "fla.ops.gdn2", "chunk_gdn2"),
    "fused_recurrent_gdn2": ("fla", "fla.ops.gdn2", "fused_recurrent_gdn2"),
    "parallel_forgetting_attn": (
        "fla", "fla.ops.forgetting_attn", "parallel_forgetting_attn"),
}

_IMPORT_ERRORS: dict[str, str] = {}


@functools.cache
def get(name: str) -> Callable[..., Any] | None:
    """The kernel function called ``name``, or None if its package does not import."""
    if name not in _KERNELS:
        raise KeyError(f"unknown kernel {name!r}; known: {sorted(_KERNELS)}")
    _, module, attr = _KERNELS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception as err:  # ImportError, OSError (missing .so), RuntimeError (no CUDA)...
        _IMPORT_ERRORS[name] = f"{type(err).__name__}: {err}"
        return None


def has(package: str) -> bool:
    """True if ``package`` is usable: at least one kernel lrm takes from it imports.

    Each op still asks for its own kernel (an older fla may lack ``gdn2``, say), so a
    package that serves some ops and not others falls back only where it must.
    """
    names = [n for n, (pkg, _, _) in _KERNELS.items() if pkg == package]
    if not names:
        raise KeyError(f"unknown kernel package {package!r}")
    return any(get(n) is not None for n in names)


def __getattr__(attr: str) -> bool:
    # HAS_MAMBA_SSM, HAS_CAUSAL_CONV1D, HAS_FLA: computed on first access, so that importing
    # lrm never imports triton or a CUDA extension.
    flags = {"HAS_MAMBA_SSM": "mamba_ssm", "HAS_CAUSAL_CONV1D": "causal_conv1d", "HAS_FLA": "fla"}
    if attr in flags:
        return has(flags[attr])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def gated_bwd_blocked_reason(capability: tuple[int, int], triton_version: str,
                             has_tilelang: bool) -> str | None:
    """Why fla's gated chunk backward refuses to run here, or None.

    fla 0.6 raises in ``chunk_bwd_dqkwg`` (the backward of ``chunk_gated_delta_rule``) on
    Hopper GPUs with Triton >= 3.4.0 and < 3.7.1, which compute wrong gradients there (fla
    issue #640), unless tilelang is installed (fla then uses its tilelang backward). Seen on
    an H200 with Triton 3.6.0 (docs/kernels.md). Knowing it up front lets the dispatcher fall
    back to the reference instead of failing in the middle of a backward pass.
    """
    if capability[0] != 9 or has_tilelang:
        return None
    if (3, 4, 0) <= _version_tuple(triton_version) < (3, 7, 1):
        return (f"fla's gated chunk backward is disabled on Hopper with Triton {triton_version}"
                f" (wrong gradients, fla issue #640); install tilelang or Triton >= 3.7.1")
    return None


@functools.cache
def fla_gated_bwd_blocked(device_index: int = 0) -> str | None:
    """:func:`gated_bwd_blocked_reason` for this machine (None when fla/triton are absent)."""
    if get("chunk_gated_delta_rule") is None:  # no fla here: nothing for it to refuse
        return None
    try:
        import importlib.util

        import triton

        return gated_bwd_blocked_reason(torch.cuda.get_device_capability(device_index),
                                        triton.__version__,
                                        importlib.util.find_spec("tilelang") is not None)
    except Exception:
        return None


def resolve_backend(backend: str) -> str:
    """Check ``backend`` and apply the ``LRM_BACKEND`` override to ``auto``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    env = os.environ.get("LRM_BACKEND", "").strip().lower()
    if env and env not in BACKENDS:
        raise ValueError(f"LRM_BACKEND must be one of {BACKENDS}, got {env!r}")
    if backend == "auto" and env:
        return env
    return backend


def use_kernel(
    op: str,
    backend: str,
    kernel: str,
    *tensors: torch.Tensor | None,
    supported: bool = True,
    why_unsupported: str = "",
) -> bool:
    """Decide whether ``op`` runs on the kernel ``kernel``; see the module docstring.

    ``supported`` is the op's own check of dtype/shape/options; ``why_unsupported`` is the
    reason shown when ``backend="kernel"`` was asked for and the check failed.
    """
    backend = resolve_backend(backend)
    if backend == "ref":
        return False
    reason = ""
    if not all(t.is_cuda for t in tensors if t is not None):
        reason = "its inputs are not all CUDA tensors"
    elif not supported:
        reason = why_unsupported or "these inputs are not supported by the kernel"
    elif get(kernel) is None:
        package = _KERNELS[kernel][0]
        reason = (f"{package} does not import ({_IMPORT_ERRORS.get(kernel, '?')}); "
                  f"install it with `pip install lrm[kernels]` on a CUDA machine")
    if reason:
        if backend == "kernel":
            raise RuntimeError(f"{op}: backend='kernel' was requested but {reason}. "
                               f"Use backend='auto' to fall back to the PyTorch reference.")
        return False
    return True
