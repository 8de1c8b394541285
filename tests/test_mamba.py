"""Mamba-1 and Mamba-2: the scan ops against their recurrences, the mixers against mambapy and
upstream's initialisation, memory growth of the references, and (CUDA only) kernel == ref."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import scan_inputs

import lrm
from lrm.mixers.mamba import Mamba
from lrm.mixers.mamba2 import Mamba2
from lrm.ops.selective_scan import (
    selective_scan,
    selective_scan_recurrent_ref,
    selective_scan_ref,
)
from lrm.ops.ssd import ssd, ssd_recurrent_ref, ssd_ref
from lrm.optim import param_groups

TOL = dict(atol=1e-4, rtol=1e-4)


def _grads(out, inputs):
    y, h = out
    loss = (y * torch.cos(y)).sum() + h.sin().sum()  # non-trivial weights on every output
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


# ----------------------------------------------------------------------------- selective scan


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("form", ["shared", "grouped", "time_invariant"])
def test_selective_scan_ref_equals_recurrence(form, with_state):
    u, delta, A, B, C, D, z, bias, h0 = inputs = scan_inputs(form, with_state)
    args = (u, delta, A, B, C, D, z, bias, True, True)
    fast = selective_scan_ref(*args, initial_state=h0, chunk_size=8)  # 37 = 4·8 + 5
    slow = selective_scan_recurrent_ref(*args, initial_state=h0)
    torch.testing.assert_close(fast[0], slow[0], **TOL)
    torch.testing.assert_close(fast[1], slow[1], **TOL)
    for gf, gs in zip(_grads(fast, inputs), _grads(slow, inputs), strict=True):
        torch.testing.assert_close(gf, gs, atol=1e-3, rtol=1e-4)


def test_selective_scan_without_options_and_streaming():
    u, delta, A, B, C, *_ = scan_inputs("shared", False, L=29)
    delta = torch.nn.functional.softplus(delta.detach())
    y = selective_scan_ref(u, delta, A, B, C, chunk_size=4)
    torch.testing.assert_close(y, selective_scan_recurrent_ref(u, delta, A, B, C), **TOL)
    # two calls with the state passed along == one call
    y1, h = selective_scan_ref(u[..., :11], delta[..., :11], A, B[..., :11], C[..., :11],
                               return_final_state=True)
    y2, h2 = selective_scan_ref(u[..., 11:], delta[..., 11:], A, B[..., 11:], C[..., 11:],
                                return_final_state=True, initial_state=h)
    y_full, h_full = selective_scan_ref(u, delta, A, B, C, return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full, **TOL)
    torch.testing.assert_close(h2, h_full, **TOL)


def test_selective_scan_dispatch_on_cpu():
    u, delta, A, B, C, D, z, bias, _ = scan_inputs("shared", False)
    ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D, z, bias, True), ref)
    with pytest.raises(RuntimeError, match="kernel"):
        selective_scan(u, delta, A, B, C, backend="kernel")
    with pytest.raises(ValueError, match=r"\(D, N\)"):
        selective_scan_ref(u, delta, A[:3], B, C)


def _saved_numel(fn) -> int:
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


def test_selective_scan_ref_keeps_no_per_token_state_for_backward():
    b, d, n = 1, 16, 16

    def run(L):
        g = torch.Generator().manual_seed(0)
        u = torch.randn(b, d, L, generator=g, requires_grad=True)
        delta = torch.rand(b, d, L, generator=g, requires_grad=True)
        A = -torch.rand(d, n, generator=g).requires_grad_()
        B, C = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
        return _saved_numel(lambda: selective_scan_ref(u, delta, A, B, C, chunk_size=32))

    saved = run(1024)
    assert saved < 0.5 * b * 1024 * d * n, f"backward keeps {saved} floats: (B, L, D, N)-sized"
    assert 1.8 < run(2048) / saved < 2.2  # linear in L


# ----------------------------------------------------------------------------- SSD


def _ssd_inputs(with_state: bool, D_shape: str, L: int = 37, b: int = 2, H: int = 4, P: int = 3,
                G: int = 2, N: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).requires_grad_()

    x, dt = r(b, L, H, P), r(b, L, H)
    A = (-torch.rand(H, generator=g) * 4 - 0.1).requires_grad_()
    B, C = r(b, L, G, N), r(b, L, G, N)
    D = r(H) if D_shape == "H" else r(H, P)
    z, dt_bias = r(b, L, H, P), r(H)
    h0 = r(b, H, P, N) if with_state else None
    return x, dt, A, B, C, D, z, dt_bias, h0


@pytest.mark.parametrize("chunk", [1, 8, 16, 64])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_ssd_ref_equals_recurrence(with_state, chunk):
    x, dt, A, B, C, D, z, dt_bias, h0 = inputs = _ssd_inputs(with_state, "HP" if chunk % 2 else "H")
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    fast = ssd_ref(x, dt, A, B, C, chunk, **kw)
    slow = ssd_recurrent_ref(x, dt, A, B, C, chunk, **kw)
    torch.testing.assert_close(fast[0], slow[0], **TOL)
    torch.testing.assert_close(fast[1], slow[1], **TOL)
    for gf, gs in zip(_grads(fast, inputs), _grads(slow, inputs), strict=True):
        torch.testing.assert_close(gf, gs, atol=1e-3, rtol=1e-4)


def test_ssd_dt_limit_and_dispatch_on_cpu():
    x, dt, A, B, C, D, _, dt_bias, _ = _ssd_inputs(False, "H")
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.05, 0.5))
    y = ssd_ref(x, dt, A, B, C, 16, **kw)
    torch.testing.assert_close(y, ssd_recurrent_ref(x, dt, A, B, C, **kw), **TOL)
    assert not torch.allclose(y, ssd_ref(x, dt, A, B, C, 16, D=D, dt_bias=dt_bias,
                                         dt_softplus=True))
    torch.testing.assert_close(ssd(x, dt, A, B, C, 16, **kw), y)
    with pytest.raises(RuntimeError, match="kernel"):
        ssd(x, dt, A, B, C, 16, backend="kernel")


def test_ssd_ref_memory_is_linear_in_length():
    def run(L):
        x, dt, A, B, C, *_ = _ssd_inputs(False, "H", L=L, b=1, H=4, P=8, G=1, N=8)
        return _saved_numel(lambda: ssd_ref(x, dt, A, B, C, 32, dt_softplus=True))

    small, big = run(512), run(1024)
    assert big < 2.2 * small  # an (L, L) mask would quadruple
    assert big < 1024 * 1024  # and never the (L, L) matrix itself


# ----------------------------------------------------------------------------- mixers


def test_mamba_matches_mambapy_with_copied_weights():
    mambapy = pytest.importorskip("mambapy.mamba")
    torch.manual_seed(0)
    cfg = mambapy.MambaConfig(d_model=64, n_layers=1, d_state=8, d_conv=4, expand_factor=2)
    theirs = mambapy.MambaBlock(cfg).eval()
    ours = Mamba(64, d_state=8, d_conv=4, expand=2, chunk_size=16).eval()
    missing = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, 40, 64)
    with torch.no_grad():
        y_theirs = theirs(x)
        y_ours, _ = ours(x)
        torch.testing.assert_close(y_ours, y_theirs, atol=1e-5, rtol=1e-4)
        # decoding: mambapy's cache (h, last conv inputs) is our state (conv, ssm)
        state = ours.init_state(2)
        cache = (None, torch.zeros(2, 128, 3))
        for t in range(5):
            y_t, state = ours(x[:, t:t + 1], state)
            yt_theirs, cache = theirs.step(x[:, t], cache)
            torch.testing.assert_close(y_t[:, 0], yt_theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(state.ssm, cache[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(state.conv, cache[1])


def test_mamba_init_follows_upstream():
    torch.manual_seed(0)
    m = Mamba(64, d_state=8, dt_min=1e-3, dt_max=0.1)
    assert m.dt_rank == 4 and m.x_proj.out_features == 4 + 16
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 9.0)).expand(128, 8))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    # log-uniform: about half of the channels below the geometric mean 1e-2
    assert 0.3 < (dt < 1e-2).float().mean() < 0.7
    assert m.dt_proj.weight.abs().max() <= 4 ** -0.5
    assert torch.equal(m.D, torch.ones(128))


def test_mamba2_init_follows_upstream():
    torch.manual_seed(0)
    m = Mamba2(64, d_state=8, head_dim=16, ngroups=2)
    assert m.nheads == 8 and m.in_proj.out_features == 2 * 128 + 2 * 2 * 8 + 8
    A = torch.exp(m.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.conv1d.weight.shape == (128 + 32, 1, 4)


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_ssm_parameters_take_no_weight_decay(cls):
    m = cls(64, d_state=8, **({"head_dim": 16} if cls is Mamba2 else {}))
    no_decay = {id(p) for grp in param_groups(m, lr=1e-3, weight_decay=0.1)
                if grp["weight_decay"] == 0.0 for p in grp["params"]}
    for name in ("A_log", "D") + (("dt_bias",) if cls is Mamba2 else ()):
        assert id(getattr(m, name)) in no_decay, name
    assert id(m.in_proj.weight) not in no_decay


def test_mamba2_block_matches_a_direct_recurrence():
    """The mixer's wiring (split order, conv over x|B|C, gated norm) against the per-token
    equations of the module docstring written out by hand."""
    torch.manual_seed(0)
    m = Mamba2(32, d_state=4, head_dim=8, chunk_size=5).eval()
    x = torch.randn(1, 11, 32)
    with torch.no_grad():
        y, _ = m(x)
        z, xBC, dt = m.in_proj(x).split([64, 64 + 8, 8], dim=-1)
        conv = torch.nn.functional.conv1d(xBC.transpose(1, 2), m.conv1d.weight, m.conv1d.bias,
                                          padding=3, groups=64 + 8)[..., :11]  # causal: 3 pads
        xBC = torch.nn.functional.silu(conv).transpose(1, 2)
        xs, B, C = xBC.split([64, 4, 4], dim=-1)
        delta = torch.nn.functional.softplus(dt + m.dt_bias)
        a = -torch.exp(m.A_log)
        h = torch.zeros(8, 8, 4)
        outs = []
        for t in range(11):
            xt = xs[0, t].view(8, 8)
            h = torch.exp(delta[0, t] * a)[:, None, None] * h + \
                delta[0, t][:, None, None] * xt[..., None] * B[0, t]
            outs.append((h @ C[0, t] + m.D[:, None] * xt).reshape(64))
        yy = torch.stack(outs)[None] * torch.nn.functional.silu(z)
        yy = yy * torch.rsqrt(yy.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight
        torch.testing.assert_close(y, m.out_proj(yy), atol=1e-5, rtol=1e-4)


def test_ngroups_norm_is_per_group():
    m = Mamba2(32, d_state=4, head_dim=8, ngroups=2)
    y = torch.randn(3, 64)
    out = m.norm(y)
    for g in range(2):
        part = y[:, 32 * g:32 * (g + 1)]
        torch.testing.assert_close(out[:, 32 * g:32 * (g + 1)],
                                   part * torch.rsqrt(part.pow(2).mean(-1, keepdim=True) + 1e-5))


def test_lm_on_mamba_learns_a_copy_task():
    torch.manual_seed(0)
    model = lrm.LRModel(lrm.ModelConfig(mixer="mamba", mixer_kwargs={"d_state": 8},
                                        d_model=32, n_layers=1, vocab_size=8, head="lm"))
    tokens = torch.randint(0, 8, (16, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):  # predict the previous token: needs the state (or the conv)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, 1:].flatten(0, 1),
                                                 tokens[:, :-1].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ----------------------------------------------------------------------------- CUDA kernels

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("form", ["shared", "grouped"])
def test_selective_scan_kernel_equals_ref(form):
    from lrm.ops import _kernels

    if _kernels.get("selective_scan_fn") is None:
        pytest.fail("mamba-ssm's selective_scan_fn does not import on this CUDA machine")
    u, delta, A, B, C, D, z, bias, _ = (
        None if t is None else t.detach().cuda().requires_grad_()
        for t in scan_inputs(form, False, L=301, d=64, n=16))
    args = (u, delta, A, B, C, D, z, bias, True, True)
    k = selective_scan(*args, backend="kernel")
    r = selective_scan_ref(*args)
    torch.testing.assert_close(k[0], r[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(k[1], r[1], atol=1e-3, rtol=1e-3)
    inputs = (u, delta, A, B, C, D, z, bias)
    gk = torch.autograd.grad(k[0].square().sum(), inputs)  # the kernel: no grad via last state
    gr = torch.autograd.grad(r[0].square().sum(), inputs)
    for a, b in zip(gk, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-3)


@pytest.mark.cuda
@cuda
def test_ssd_kernel_equals_ref():
    from lrm.ops import _kernels

    if _kernels.get("mamba_chunk_scan_combined") is None:
        pytest.fail("mamba-ssm's mamba_chunk_scan_combined does not import on this machine")
    x, dt, A, B, C, D, z, dt_bias, h0 = (
        t.detach().cuda().requires_grad_()
        for t in _ssd_inputs(True, "H", L=301, H=8, P=16, G=2, N=16))
    kw = dict(D=D, z=z, dt_bias=dt_bias, initial_state=h0, dt_softplus=True,
              return_final_state=True)
    k = ssd(x, dt, A, B, C, 64, **kw, backend="kernel")
    r = ssd_ref(x, dt, A, B, C, 64, **kw)
    torch.testing.assert_close(k[0], r[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(k[1], r[1], atol=1e-3, rtol=1e-3)
    inputs = (x, dt, A, B, C, D, z, dt_bias, h0)
    gk = torch.autograd.grad(k[0].square().sum() + k[1].square().sum(), inputs)
    gr = torch.autograd.grad(r[0].square().sum() + r[1].square().sum(), inputs)
    for a, b in zip(gk, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-3)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_mixer_on_kernels_equals_reference(name, monkeypatch):
    torch.manual_seed(0)
    m = lrm.mixer(name, 64, d_state=16).cuda()
    x = torch.randn(2, 300, 64, device="cuda")
    y_auto, _ = m(x)
    monkeypatch.setenv("LRM_BACKEND", "ref")
    y_ref, _ = m(x)
    torch.testing.assert_close(y_auto, y_ref, atol=1e-3, rtol=1e-3)
    assert math.isfinite(y_auto.float().sum().item())


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_model_config_yaml_builds(name):
    yaml = pytest.importorskip("yaml")
    from pathlib import Path

    path = Path(__file__).parents[1] / "configs" / "model" / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text())["model"]["model"]  # an `lra fit` config fragment
    cfg.update(d_model=64, n_layers=1, vocab_size=11, head="lm")  # small, same options
    model = lrm.LRModel(lrm.ModelConfig.from_dict(cfg))
    assert model(torch.randint(0, 11, (1, 9))).shape == (1, 9, 11)
