"""Helpers shared by several test modules (pytest puts tests/ on the import path): inputs of
the ops, float64 comparison and gradcheck, the memory autograd keeps, and the independent
building blocks of the paper-equation tests of tests/mixers/."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch
from torch.autograd import gradcheck
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


def saved_numel(fn) -> int:
    """Floats autograd keeps for backward while ``fn()`` runs its forward, counting the whole
    storage behind each saved tensor once (a saved view keeps its whole base alive)."""
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


# ----------------------------------------------------------------------------- float64


F64 = torch.float64
F64_TOL = 1e-12  # relative, in the max norm: a few hundred ulps of float64


def rand(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_f64_close(a: torch.Tensor, b: torch.Tensor, tol: float = F64_TOL) -> None:
    """max|a − b| <= tol · max|b|, both float64 (or complex128)."""
    assert a.dtype == b.dtype and a.dtype in (F64, torch.complex128), (a.dtype, b.dtype)
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1e-300)
    assert err <= tol * scale, f"relative error {err / scale:.2e} > {tol:.0e}"


def check_grad(fn, *inputs: torch.Tensor) -> None:
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point() or t.is_complex())
              for t in inputs]
    assert gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=False)


# ----------------------------------------------------------------------------- paper equations
# Building blocks of the paper-equation tests in tests/mixers/: each mixer's output computed from
# its own parameters by an independent, token-by-token loop of its paper's equations. The
# contract suite checks that a mixer agrees with itself (full == chunked == token by token);
# only a test like these can notice that it computes the wrong thing consistently (a dropped
# norm, β where 1 − β belongs, a decay of the wrong sign). The loops use plain tensor arithmetic
# and torch.nn.functional pointwise functions only: no lrm op, norm or conv. Every parameter is
# perturbed first (``prepare``), so that parameters which start at 0 or 1 (norm weights, biases,
# D) cannot hide a missing term. Everything runs in float64; the tolerance allows for the parts
# of the mixers that still compute in fp32 internally, far below the size of any planted bug
# (scripts/mutants.py). Where lrm follows a convention of the authors' code rather than the
# paper's notation, the loops follow the code: the gated-delta-rule output is scaled by 1/√K
# (fla), RoPE rotates the pairs (i, i + Dh/2) (GPT-NeoX), and the S4 state is written in the
# full complex basis of conjugate pairs, as the S4 code's Cauchy kernel sums it.


DTYPE = torch.float64
# fp32-level: some mixers still round parts of their computation to fp32 (they agree with the
# loops to about 5e-7 relative); float64 end to end (lrm.dtypes) allows ~1e-12
EQ_TOL = dict(atol=1e-5, rtol=1e-5)


def prepare(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The module in float64, eval mode, every parameter moved off its initial value."""
    m = m.to(DTYPE).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


def inputs(B: int = 2, L: int = 13, d: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, L, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def causal_conv(x: torch.Tensor, conv: torch.nn.Module) -> torch.Tensor:
    """Depthwise causal conv, written out: y_t = Σ_i w_i x_{t−W+1+i} (+ bias); x (B, L, C).

    ``conv`` is an ``nn.Conv1d`` or a module holding one as ``conv1d``."""
    conv = getattr(conv, "conv1d", conv)
    w, b = conv.weight[:, 0], conv.bias  # (C, W)
    W = w.shape[-1]
    y = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for i in range(W):
            s = t - (W - 1) + i
            if s >= 0:
                y[:, t] += w[:, i] * x[:, s]
        if b is not None:
            y[:, t] += b
    return y


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis."""
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def heads(x: torch.Tensor, H: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], H, x.shape[-1] // H)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == DTYPE
    torch.testing.assert_close(actual, expected, **EQ_TOL)


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """x (B, L, H, Dh) rotated by position t: channel pair (i, i + Dh/2) by t · base^(−2i/Dh)."""
    Dh = x.shape[-1]
    out = torch.empty_like(x)
    for t in range(x.shape[1]):
        for i in range(Dh // 2):
            angle = t * base ** (-2 * i / Dh)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, t, :, i], x[:, t, :, i + Dh // 2]
            out[:, t, :, i], out[:, t, :, i + Dh // 2] = a * c - b * s, a * s + b * c
    return out


def softmax_attention(q, k, v, bias=None) -> torch.Tensor:
    """o_i = Σ_{j≤i} softmax_j(q_i·k_j / √Dh + bias_ij) v_j, one query at a time; (B, L, H, Dh)."""
    outs = []
    for i in range(q.shape[1]):
        s = torch.einsum("bhe,bjhe->bhj", q[:, i], k[:, :i + 1]) / math.sqrt(q.shape[-1])
        if bias is not None:
            s = s + bias(i)
        p = torch.exp(s - s.amax(-1, keepdim=True))
        outs.append(torch.einsum("bhj,bjhe->bhe", p / p.sum(-1, keepdim=True), v[:, :i + 1]))
    return torch.stack(outs, 1)


def longmamba_filter(m, delta: torch.Tensor, L: int) -> torch.Tensor:
    """LongMamba (Ye et al., 2025) on Δ (B, L, C) of a prefill of L > T_tr tokens: in global
    channels (calibrated score exp(a·ΣΔ) > c) zero every Δ_t ≤ θ(T), with T the calibrated
    target length nearest to L. Identity when uncalibrated or L ≤ T_tr."""
    f = m.longmamba
    if f is None or int(f.train_len) == 0 or int(f.train_len) >= L:
        return delta
    T_tr = int(f.train_len)
    targets = [round(factor * T_tr) for factor in f.config.length_factors]
    nearest = min(range(len(targets)), key=lambda i: abs(targets[i] - L))
    theta = f.theta[nearest] * f.config.threshold_scale  # (C,)
    is_global = f.score > f.config.channel_threshold
    return torch.where(is_global & (delta <= theta), torch.zeros_like(delta), delta)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def weighted_loss(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A scalar of an op's output y and final state h with non-trivial weights on every entry
    (a plain sum would give every gradient the same weight)."""
    return (y * torch.cos(y)).sum() + h.sin().sum()


def lean_grads(out, inputs):
    """Gradients of a fixed non-linear function of an op's (output, final state)."""
    loss = weighted_loss(*out)
    # the graph is kept: one lean result is compared with two references
    return torch.autograd.grad(loss, [t for t in inputs if t is not None], retain_graph=True)


def assert_lean_same(lean, ref, inputs, atol=1e-4, grad_atol=1e-3):
    """A lean tier's (output, state) and gradients equal a reference's."""
    torch.testing.assert_close(lean[0], ref[0], atol=atol, rtol=1e-4)
    torch.testing.assert_close(lean[1], ref[1], atol=atol, rtol=1e-4)
    for gl, gr in zip(lean_grads(lean, inputs), lean_grads(ref, inputs), strict=True):
        torch.testing.assert_close(gl, gr, atol=grad_atol, rtol=1e-4)


def complex_pairs(p: torch.Tensor) -> torch.Tensor:
    """(..., 2) stored as (re, im) -> complex (S4's and S4D's parameter layout)."""
    return torch.complex(p[..., 0], p[..., 1])


def ssm_block(m, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y (B, L, H) of the SSMs -> the S4 block: + D u, GELU, Linear H -> 2H, GLU."""
    y = y + m.D[0] * u
    a, b = linear(m.output_linear, torch.nn.functional.gelu(y)).chunk(2, dim=-1)
    return a * torch.sigmoid(b)


def load_script(name: str):
    """``scripts/<name>.py`` imported as the module ``name`` (scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
