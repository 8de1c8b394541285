"""Kernel dispatch (lrm.ops._kernels): the backend rule, the kernel table, the import flags and
the state handed to each kernel under its own name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lrm.ops import _kernels
from lrm.ops.causal_conv import causal_conv1d


def test_backend_rule(monkeypatch):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        _kernels.use_kernel("op", "fast", "causal_conv1d_fn", x)
    assert _kernels.use_kernel("op", "auto", "causal_conv1d_fn", x) is False
    assert _kernels.use_kernel("op", "ref", "causal_conv1d_fn", x) is False
    with pytest.raises(RuntimeError, match="not all CUDA"):
        _kernels.use_kernel("op", "kernel", "causal_conv1d_fn", x)
    monkeypatch.setenv("LRM_BACKEND", "kernel")
    with pytest.raises(RuntimeError, match="backend='kernel'"):
        causal_conv1d(torch.randn(1, 4, 5), torch.randn(4, 3))
    monkeypatch.setenv("LRM_BACKEND", "turbo")
    with pytest.raises(ValueError, match="LRM_BACKEND"):
        _kernels.resolve_backend("auto")


def test_every_kernel_entry_is_dispatched_by_an_op():
    """_kernels.py lists only kernels that some op in lrm/ops/ asks for by name."""
    ops = Path(_kernels.__file__).parent
    sources = "".join(p.read_text() for p in ops.glob("*.py") if p.name != "_kernels.py")
    unused = [name for name in _kernels._KERNELS if f'"{name}"' not in sources]
    assert not unused, f"kernel entries no op dispatches to: {unused}"


def test_kernel_flags_follow_what_imports(monkeypatch):
    """has(package) is True iff one of the package's kernels imports; the HAS_* flags say the
    same; a kernel whose import fails is None, with the reason kept."""
    imports = {"chunk_gdn2"}  # an fla that serves GDN-2 only
    monkeypatch.setattr(_kernels, "get", lambda name: (lambda: None) if name in imports else None)
    assert _kernels.has("fla") is True and _kernels.HAS_FLA is True
    assert _kernels.has("mamba_ssm") is False and _kernels.HAS_MAMBA_SSM is False
    imports.clear()
    assert _kernels.has("fla") is False and _kernels.HAS_FLA is False
    with pytest.raises(KeyError, match="unknown kernel package"):
        _kernels.has("numpy")
    monkeypatch.undo()
    monkeypatch.setitem(_kernels._KERNELS, "test_missing", ("nopkg", "lrm.no_such_module", "f"))
    monkeypatch.setitem(_kernels._KERNELS, "test_present", ("torch", "torch.nn.functional",
                                                             "silu"))
    assert _kernels.get("test_missing") is None
    assert "ModuleNotFoundError" in _kernels._IMPORT_ERRORS["test_missing"]
    assert _kernels.get("test_present") is torch.nn.functional.silu


def test_dispatch_passes_the_state_under_each_kernels_own_name(monkeypatch):
    """lrm's ops say initial_state / return_final_state; each kernel package has its own names
    (mamba-ssm: return_last_state, initial_states / return_final_states; fla:
    output_final_state). A recording stand-in for every kernel checks the translation on CPU."""
    from lrm.ops.delta_rule import gated_delta_rule, gdn2
    from lrm.ops.selective_scan import selective_scan
    from lrm.ops.ssd import ssd

    calls: dict[str, tuple[tuple, dict]] = {}

    def fake(name):
        def kernel(*args, **kwargs):
            calls[name] = (args, kwargs)
            return torch.zeros(1), torch.zeros(1)
        return kernel

    monkeypatch.setattr(_kernels, "use_kernel", lambda *a, **kw: True)
    monkeypatch.setattr(_kernels, "get", fake)
    B, L, d, n = 1, 5, 4, 3
    u = torch.randn(B, d, L)
    selective_scan(u, u, -torch.ones(d, n), torch.randn(B, n, L), torch.randn(B, n, L),
                   return_final_state=True)
    assert calls["selective_scan_fn"][1] == {"return_last_state": True}
    x, h0 = torch.randn(B, L, 2, 4), torch.randn(B, 2, 4, n)
    ssd(x, torch.rand(B, L, 2), -torch.ones(2), torch.randn(B, L, 1, n), torch.randn(B, L, 1, n),
        4, initial_state=h0, return_final_state=True)
    kw = calls["mamba_chunk_scan_combined"][1]
    assert kw["initial_states"] is h0 and kw["return_final_states"] is True
    assert not {"initial_state", "return_final_state"} & set(kw)
    q, g, h0 = torch.randn(B, L, 2, 4), torch.rand(B, L, 2), torch.randn(B, 2, 4, 4)
    # no gradient and T <= 64: fla's fused recurrent kernels (the chunk ones take the same names)
    for name, op, gates in (("fused_recurrent_gated_delta_rule", gated_delta_rule, (g, g)),
                            ("fused_recurrent_gdn2", gdn2, (q, q, q))):
        op(q, q, q, *gates, initial_state=h0, return_final_state=True)
        kw = calls[name][1]
        assert kw["output_final_state"] is True and "return_final_state" not in kw, name
        torch.testing.assert_close(kw["initial_state"], h0)
