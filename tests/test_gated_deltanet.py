"""Gated DeltaNet: the delta-rule ops (chunked == recurrent == fla's naive refs) and the mixer.

The mixer contract itself is checked by tests/test_conformance.py (variants default, deltanet,
no_delta, gdn2); here are the op-level oracles and the GDN-specific facts.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import lrm
from lrm.mixers.gated_deltanet import GatedDeltaNet
from lrm.ops import delta_rule as dr
from lrm.optim import param_groups

B, H, K, V = 2, 2, 8, 12
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def fla_naive(op: str):
    """fla's pure-PyTorch naive.py for ``op``, loaded by path (importing fla.ops wants triton)."""
    spec = importlib.util.find_spec("fla")
    if spec is None:
        pytest.fail("fla-core (a [dev] dependency) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "ops", op, "naive.py")
    mod_spec = importlib.util.spec_from_file_location(f"_fla_naive_{op}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def gdn_inputs(T: int, seed: int = 0, device: str = "cpu", strong_decay: bool = False):
    g_ = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g_)
    k = F.normalize(torch.randn(B, T, H, K, generator=g_), dim=-1)
    v = torch.randn(B, T, H, V, generator=g_)
    g = F.logsigmoid(torch.randn(B, T, H, generator=g_) + 2.0)
    if strong_decay:  # α ≈ e^-30 at some steps: a naive exp(−cumsum) factorisation overflows
        g = g - 30.0 * (torch.rand(B, T, H, generator=g_) < 0.3)
    beta = torch.rand(B, T, H, generator=g_)
    h0 = torch.randn(B, H, K, V, generator=g_)
    return [t.to(device) for t in (q, k, v, g, beta, h0)]


def gdn2_inputs(T: int, seed: int = 0, device: str = "cpu"):
    g_ = torch.Generator().manual_seed(seed)
    q, k, v, _, _, h0 = gdn_inputs(T, seed, device)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=g_) + 2.0)
    b = torch.rand(B, T, H, K, generator=g_)
    w = torch.rand(B, T, H, V, generator=g_)
    return q, k, v, g.to(device), b.to(device), w.to(device), h0


def run_with_grads(fn, tensors, use_h0: bool, seed: int = 1):
    """fn(*tensors[:-1], initial_state=...) -> outputs, final state, grads of a random loss."""
    tensors = [t.clone().requires_grad_(True) for t in tensors]
    *args, h0 = tensors
    o, h = fn(*args, initial_state=h0 if use_h0 else None, return_final_state=True)
    g_ = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=g_).to(o)).sum() + \
        (h * torch.randn(h.shape, generator=g_).to(h)).sum()
    loss.backward()
    grads = [t.grad for t in (tensors if use_h0 else tensors[:-1])]
    return o.detach(), h.detach(), grads


TOL = dict(atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- GDN op


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
@pytest.mark.parametrize("T", [37, 100])
def test_chunk_equals_recurrent(T, use_h0):
    ins = gdn_inputs(T)
    ref = run_with_grads(dr.gated_delta_rule_recurrent_ref, ins, use_h0)
    chk = run_with_grads(lambda *a, **kw: dr.gated_delta_rule_ref(*a, chunk_size=16, **kw),
                         ins, use_h0)
    torch.testing.assert_close(chk[0], ref[0], **TOL)
    torch.testing.assert_close(chk[1], ref[1], **TOL)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "h0"], chk[2], ref[2], strict=False):
        torch.testing.assert_close(a, b, **TOL, msg=lambda s, n=name: f"grad {n}: {s}")


def test_chunk_is_stable_under_strong_decay():
    ins = gdn_inputs(50, strong_decay=True)
    ref = run_with_grads(dr.gated_delta_rule_recurrent_ref, ins, True)
    chk = run_with_grads(lambda *a, **kw: dr.gated_delta_rule_ref(*a, chunk_size=32, **kw),
                         ins, True)
    for a, b in zip([chk[0], chk[1], *chk[2]], [ref[0], ref[1], *ref[2]], strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
def test_matches_fla_naive(use_h0):
    naive = fla_naive("gated_delta_rule")
    q, k, v, g, beta, h0 = gdn_inputs(77)
    h0 = h0 if use_h0 else None
    o, h = dr.gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0, return_final_state=True)
    # mind the orders: naive_recurrent takes (..., beta, g), naive_chunk (..., g, beta); fla
    # spells return_final_state as output_final_state
    o_r, h_r = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=h0,
                                                      output_final_state=True)
    o_c, h_c = naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                                  output_final_state=True)
    for o_ref, h_ref in ((o_r, h_r), (o_c, h_c)):
        torch.testing.assert_close(o, o_ref.float(), **TOL)
        torch.testing.assert_close(h, h_ref.float(), **TOL)


def test_delta_rule_overwrites_where_linear_attention_accumulates():
    """With α = 1, β = 1 and orthonormal keys, writing (k1, v3) after (k1, v1) replaces v1."""
    keys = torch.eye(K)[:2]  # k1, k2 orthonormal
    k = torch.stack([keys[0], keys[1], keys[0]])[None, :, None]  # (1, 3, 1, K)
    v = torch.randn(1, 3, 1, V)
    ones = torch.ones(1, 3, 1)
    q = k * K ** 0.5  # undo the default 1/√K scale: o_t = h_tᵀ k_t
    for fn in (dr.gated_delta_rule_recurrent_ref, dr.gated_delta_rule_ref):
        o, _ = fn(q, k, v, torch.zeros_like(ones), ones)
        torch.testing.assert_close(o[0, 2, 0], v[0, 2, 0])  # k1 now reads v3, not v1 + v3
        torch.testing.assert_close(o[0, 1, 0], v[0, 1, 0])  # k2 untouched
    # linear attention (GDN-2 with erase gate 0, write gate 1) sums both writes at k1
    o_lin, _ = dr.gdn2_ref(q, k, v, torch.zeros(1, 3, 1, K), torch.zeros(1, 3, 1, K),
                           torch.ones(1, 3, 1, V))
    torch.testing.assert_close(o_lin[0, 2, 0], v[0, 0, 0] + v[0, 2, 0])


def test_dispatch_on_cpu():
    q, k, v, g, beta, h0 = gdn_inputs(20)
    o, h = dr.gated_delta_rule(q, k, v, g, beta, initial_state=h0, return_final_state=True)
    o_ref, h_ref = dr.gated_delta_rule_ref(q, k, v, g, beta, initial_state=h0,
                                           return_final_state=True)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(h, h_ref)
    with pytest.raises(RuntimeError, match="kernel"):
        dr.gated_delta_rule(q, k, v, g, beta, backend="kernel")
    with pytest.raises(ValueError, match="beta"):
        dr.gated_delta_rule(q, k, v, g, beta[:, :-1])


# ----------------------------------------------------------------------------- GDN-2 op


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
@pytest.mark.parametrize("T", [37, 100])
def test_gdn2_chunk_equals_recurrent(T, use_h0):
    ins = gdn2_inputs(T)
    ref = run_with_grads(dr.gdn2_recurrent_ref, ins, use_h0)
    chk = run_with_grads(lambda *a, **kw: dr.gdn2_ref(*a, chunk_size=16, **kw), ins, use_h0)
    torch.testing.assert_close(chk[0], ref[0], **TOL)
    torch.testing.assert_close(chk[1], ref[1], **TOL)
    for name, a, b in zip(["q", "k", "v", "g", "b", "w", "h0"], chk[2], ref[2], strict=False):
        torch.testing.assert_close(a, b, **TOL, msg=lambda s, n=name: f"grad {n}: {s}")


@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
def test_gdn2_matches_fla_naive(use_h0):
    naive = fla_naive("gdn2")
    q, k, v, g, b, w, h0 = gdn2_inputs(77)
    h0 = h0 if use_h0 else None
    kw = dict(initial_state=h0, return_final_state=True)
    o, h = dr.gdn2_recurrent_ref(q, k, v, g, b, w, **kw)
    o_c, h_c = dr.gdn2_ref(q, k, v, g, b, w, **kw)
    fla_kw = dict(initial_state=h0, output_final_state=True)  # fla's spelling
    o_n, h_n = naive.naive_recurrent_gdn2(q, k, v, g, b, w, **fla_kw)
    o_nc, h_nc = naive.naive_chunk_gdn2(q, k, v, g, b, w, **fla_kw)
    for o_x, h_x in ((o_c, h_c), (o_n, h_n), (o_nc, h_nc)):
        torch.testing.assert_close(o_x.float(), o, **TOL)
        torch.testing.assert_close(h_x.float(), h, **TOL)


@pytest.mark.parametrize("fn2, fn1", [
    (dr.gdn2_recurrent_ref, dr.gated_delta_rule_recurrent_ref),
    (dr.gdn2_ref, dr.gated_delta_rule_ref)], ids=["recurrent", "chunk"])
def test_gdn2_with_tied_scalar_gates_is_gdn(fn2, fn1):
    q, k, v, g, beta, h0 = gdn_inputs(45)
    kw = dict(initial_state=h0, return_final_state=True)
    o2, h2 = fn2(q, k, v, g[..., None].expand(-1, -1, -1, K), beta[..., None].expand(q.shape),
                 beta[..., None].expand(v.shape), **kw)
    o1, h1 = fn1(q, k, v, g, beta, **kw)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(h2, h1, **TOL)


# ----------------------------------------------------------------------------- the mixer


def test_parameter_names_follow_fla_and_gates_are_not_decayed():
    m = GatedDeltaNet(64, head_dim=16)
    names = {n for n, _ in m.named_parameters()}
    assert names == {
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "a_proj.weight", "b_proj.weight",
        "g_proj.weight", "A_log", "dt_bias", "q_conv1d.weight",
        "k_conv1d.weight", "v_conv1d.weight", "o_norm.weight", "o_proj.weight"}
    groups = param_groups(m, lr=1e-3, weight_decay=0.1)
    no_wd = {id(p) for grp in groups if grp["weight_decay"] == 0.0 for p in grp["params"]}
    assert id(m.A_log) in no_wd and id(m.dt_bias) in no_wd
    assert m.A_log._optim == {"weight_decay": 0.0} and m.dt_bias._optim == {"weight_decay": 0.0}
    plain = {n for n, _ in GatedDeltaNet(64, head_dim=16, use_forget_gate=False,
                                         use_gate=False).named_parameters()}
    assert not plain & {"a_proj.weight", "A_log", "dt_bias", "g_proj.weight"}
    gdn2 = {n for n, _ in GatedDeltaNet(64, head_dim=16, gates="gdn2").named_parameters()}
    assert {"f_proj.0.weight", "f_proj.1.weight", "w_proj.weight"} <= gdn2
    assert GatedDeltaNet.default_mlp_ratio == 4


def test_default_layout_follows_fla():
    """num_heads · head_dim = 0.75 d, expand_v = 2: about 6 d² parameters (fla's docstring)."""
    d = 512
    m = GatedDeltaNet(d, head_dim=64)
    assert (m.n_heads, m.key_dim, m.value_dim) == (6, 384, 768)
    assert m.A_log.shape == m.dt_bias.shape == (6,)
    n = sum(p.numel() for p in m.parameters())
    assert 6 * d * d <= n < 6.05 * d * d
    assert m.state_size(10**6) == 6 * 64 * 128 + 3 * (2 * 384 + 768)
    # A ~ U(0, 16) and softplus(dt_bias) in [1e-4, 0.1]
    assert (m.A_log.exp() <= 16).all()
    assert (F.softplus(m.dt_bias) >= 1e-4 - 1e-7).all() and (F.softplus(m.dt_bias) <= 0.1).all()


def test_mixer_gdn2_with_tied_gates_equals_gdn():
    """Set the GDN-2 projections so that b = w = β and g is the same for every channel of a
    head; the GDN-2 mixer must then reproduce the GDN mixer."""
    torch.manual_seed(0)
    d = 64
    m1 = GatedDeltaNet(d, head_dim=16)
    m2 = GatedDeltaNet(d, head_dim=16, gates="gdn2")
    Kh, Vh, nh = m1.head_k_dim, m1.head_v_dim, m1.n_heads
    shared = {n: p for n, p in m1.state_dict().items() if not n.startswith(("a_proj", "b_proj",
                                                                             "dt_bias"))}
    m2.load_state_dict(shared, strict=False)
    with torch.no_grad():
        m2.f_proj[0].weight.zero_()
        m2.f_proj[0].weight[:nh] = m1.a_proj.weight  # first nh hidden units = the GDN gate
        m2.f_proj[1].weight.zero_()
        for h in range(nh):
            m2.f_proj[1].weight[h * Kh:(h + 1) * Kh, h] = 1.0  # copy head h's gate to its K
        m2.dt_bias.copy_(m1.dt_bias.repeat_interleave(Kh))
        m2.b_proj.weight.copy_(m1.b_proj.weight.repeat_interleave(Kh, dim=0))
        m2.w_proj.weight.copy_(m1.b_proj.weight.repeat_interleave(Vh, dim=0))
    x = torch.randn(2, 41, d)
    with torch.no_grad():
        torch.testing.assert_close(m2(x)[0], m1(x)[0], atol=1e-5, rtol=1e-4)


def test_no_delta_variant_is_gated_linear_attention():
    """delta_rule=False: h_t = α_t h_{t−1} + β_t k_t v_tᵀ, checked against a loop."""
    torch.manual_seed(0)
    m = GatedDeltaNet(32, head_dim=8, delta_rule=False)
    q = F.normalize(torch.randn(1, 9, m.n_heads, 8), dim=-1)
    k = F.normalize(torch.randn(1, 9, m.n_heads, 8), dim=-1)
    v = torch.randn(1, 9, m.n_heads, 16)
    g = F.logsigmoid(torch.randn(1, 9, m.n_heads))
    beta = torch.rand(1, 9, m.n_heads)
    o, _ = dr.gdn2(q, k, v, g[..., None].expand(q.shape), torch.zeros_like(q),
                   beta[..., None].expand(v.shape))
    h = torch.zeros(1, m.n_heads, 8, 16)
    for t in range(9):
        h = g[:, t].exp()[..., None, None] * h + beta[:, t, :, None, None] * \
            k[:, t, :, :, None] * v[:, t, :, None, :]
        torch.testing.assert_close(o[:, t], torch.einsum("bhk,bhkv->bhv", q[:, t], h) * 8**-0.5)
    y, _ = m(torch.randn(2, 9, 32))
    assert y.shape == (2, 9, 32)


def test_block_uses_mlp_ratio_4():
    block = lrm.build("gdn", d=64, head_dim=16)
    assert block.mlp is not None and block.mlp.fc2.in_features >= 64 * 4 * 2 // 3


# ----------------------------------------------------------------------------- CUDA kernels


def test_hopper_triton_guard_mirrors_fla():
    from lrm.ops._kernels import gated_bwd_blocked_reason as why

    assert "#640" in why((9, 0), "3.6.0", has_tilelang=False)  # seen on an H200
    assert "#640" in why((9, 0), "3.4.0", has_tilelang=False)
    assert why((9, 0), "3.7.1", has_tilelang=False) is None
    assert why((9, 0), "3.3.1", has_tilelang=False) is None
    assert why((9, 0), "3.6.0", has_tilelang=True) is None  # fla then uses tilelang
    assert why((8, 0), "3.6.0", has_tilelang=False) is None  # A100: not affected
    assert why((10, 0), "3.6.0+git1234", has_tilelang=False) is None


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("use_h0", [False, True], ids=["h0=0", "h0"])
def test_kernel_matches_ref_cuda(use_h0):
    ins = gdn_inputs(300, device="cuda")
    fla_fn = lambda *a, **kw: dr.gated_delta_rule(*a, backend="kernel", **kw)  # noqa: E731
    from lrm.ops import _kernels

    blocked = _kernels.fla_gated_bwd_blocked()
    if blocked:  # fla refuses this backward here: we must say so up front, not mid-backward
        with pytest.raises(RuntimeError, match="#640"):
            run_with_grads(fla_fn, ins, use_h0)
        with torch.no_grad():  # the chunk forward kernel still serves
            o_k, h_k = fla_fn(*ins[:5], initial_state=ins[5] if use_h0 else None,
                              return_final_state=True)
            o_r, h_r = dr.gated_delta_rule_ref(*ins[:5], initial_state=ins[5] if use_h0
                                               else None, return_final_state=True)
        torch.testing.assert_close(o_k, o_r, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(h_k, h_r, atol=2e-3, rtol=2e-3)
        return
    ker = run_with_grads(fla_fn, ins, use_h0)
    ref = run_with_grads(dr.gated_delta_rule_ref, ins, use_h0)
    tol = dict(atol=2e-3, rtol=2e-3)  # the kernel's tf32 matmuls
    torch.testing.assert_close(ker[0], ref[0], **tol)
    torch.testing.assert_close(ker[1], ref[1], **tol)
    for a, b in zip(ker[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, **tol)
    with torch.no_grad():  # T <= 64 without grad: the fused recurrent (decode) kernel
        q, k, v, g, beta = (t[:, :7] for t in ins[:5])
        h0 = ins[5] if use_h0 else None
        o_k, h_k = dr.gated_delta_rule(q, k, v, g, beta, initial_state=h0,
                                       return_final_state=True, backend="kernel")
        o_r, h_r = dr.gated_delta_rule_recurrent_ref(q, k, v, g, beta, initial_state=h0,
                                                     return_final_state=True)
    torch.testing.assert_close(o_k, o_r, **tol)
    torch.testing.assert_close(h_k, h_r, **tol)


@pytest.mark.cuda
@cuda
def test_gdn2_kernel_matches_ref_cuda():
    ins = gdn2_inputs(300, device="cuda")
    ker = run_with_grads(lambda *a, **kw: dr.gdn2(*a, backend="kernel", **kw), ins, True)
    ref = run_with_grads(dr.gdn2_ref, ins, True)
    tol = dict(atol=2e-3, rtol=2e-3)
    for a, b in zip([ker[0], ker[1], *ker[2]], [ref[0], ref[1], *ref[2]], strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("gates", ["gdn", "gdn2"])
def test_mixer_on_kernels_cuda(gates, monkeypatch):
    torch.manual_seed(0)
    m = GatedDeltaNet(128, head_dim=32, gates=gates).cuda().eval()
    x = torch.randn(2, 150, 128, device="cuda")
    with torch.no_grad():
        y, _ = m(x)
        monkeypatch.setenv("LRM_BACKEND", "ref")
        y_ref, _ = m(x)
        monkeypatch.delenv("LRM_BACKEND")
        state, ys = m.init_state(2, device="cuda"), []
        for t in range(150):  # decoding: the fused recurrent kernel, one token at a time
            y_t, state = m(x[:, t:t + 1], state)
            ys.append(y_t)
    torch.testing.assert_close(y, y_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(torch.cat(ys, 1), y_ref, atol=2e-3, rtol=2e-3)
