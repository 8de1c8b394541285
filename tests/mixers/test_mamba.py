"""The Mamba mixer (lrm.mixers.mamba) against the paper's equations, LongMamba on Mamba and
Mamba-2 against its recipe; parity with mambapy, upstream init, weight decay, a copy task,
the kernels and the model configs.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import causal_conv, close, inputs, linear, longmamba_filter, prepare
from test_mamba2 import mamba2_equations, mamba2_step_sizes  # (tests/mixers is on the path)

import lrm
import lrm.longmamba
from lrm.mixers.mamba import Mamba
from lrm.mixers.mamba2 import Mamba2
from lrm.optim import param_groups

# ----------------------------------------------------------------------------- Mamba


def mamba_step_sizes(m: Mamba, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mamba's inputs to the scan: x (after conv and SiLU), z, Δ (unfiltered), B, C."""
    xs, z = linear(m.in_proj, x).chunk(2, dim=-1)
    xs = F.silu(causal_conv(xs, m.conv1d))
    dt, Bm, Cm = linear(m.x_proj, xs).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    return xs, z, F.softplus(linear(m.dt_proj, dt)), Bm, Cm  # Δ: (B, L, d_in)


def mamba_equations(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """Mamba (Gu & Dao, 2023): [x; z] = W_in u, x ← SiLU(conv(x)), [δ; B; C] = W_x x,
    Δ = softplus(W_Δ δ + b_Δ), h_t = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t x_t) ⊗ B_t, A = −exp(A_log),
    y_t = h_t C_t + D ⊙ x_t, out = W_out (y ⊙ SiLU(z))."""
    Bsz, L, _ = x.shape
    xs, z, delta, Bm, Cm = mamba_step_sizes(m, x)
    delta = longmamba_filter(m, delta, L)
    A = -torch.exp(m.A_log)  # (d_in, N)
    h = torch.zeros(Bsz, m.d_inner, m.d_state, dtype=x.dtype)
    ys = []
    for t in range(L):
        d_t = delta[:, t, :, None]
        h = torch.exp(d_t * A) * h + d_t * xs[:, t, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + m.D * xs[:, t])
    return linear(m.out_proj, torch.stack(ys, 1) * F.silu(z))


MAMBA_OPTIONS = {
    "default": {"d_state": 4},
    "small": {"d_state": 8, "dt_rank": 4, "d_conv": 3, "chunk_size": 4},
    "bias": {"d_state": 4, "bias": True, "conv_bias": False, "chunk_size": 5},
}


@pytest.mark.parametrize("kw", MAMBA_OPTIONS.values(), ids=MAMBA_OPTIONS.keys())
def test_mamba_follows_the_paper(kw):
    m = prepare(Mamba(16, **kw))
    x = inputs(d=16)
    with torch.no_grad():
        close(m(x)[0], mamba_equations(m, x))


def receptive_field_score(m, x: torch.Tensor, step_sizes) -> torch.Tensor:
    """LongMamba's channel score from calibration samples x (B, T_tr, d): per sample,
    exp(a_c · Σ_t Δ_t,c) with Δ clamped at its top ``clamp_top`` quantile, averaged over the
    samples. a_c is the channel's decay rate: Mamba-2's a_h, and for Mamba-1 the slowest of the
    channel's N states, max_n A[c, n] (the paper's code covers Mamba-2 only)."""
    delta = step_sizes(m, x)[4 if isinstance(m, Mamba2) else 2]  # (B, T_tr, C)
    a = -torch.exp(m.A_log)
    if a.dim() == 2:
        a = a.max(-1).values
    k = max(1, int(x.shape[1] * m.longmamba.config.clamp_top))
    ceiling = delta.sort(dim=1, descending=True).values[:, k - 1:k]  # the k-th largest
    return torch.exp(a * torch.minimum(delta, ceiling).sum(1)).mean(0)


@pytest.mark.parametrize(("cls", "kw", "equations", "step_sizes"), [
    (Mamba, {"d_state": 4, "chunk_size": 8}, mamba_equations, mamba_step_sizes),
    (Mamba2, {"d_state": 4, "head_dim": 4, "chunk_size": 8}, mamba2_equations, mamba2_step_sizes),
], ids=["mamba", "mamba2"])
def test_longmamba_follows_the_paper(cls, kw, equations, step_sizes):
    """Calibrated at T_tr = 8, a prefill of 30 tokens is filtered in the global channels."""
    m = prepare(cls(16, longmamba={"channel_threshold": 0.5}, **kw))
    calibration = inputs(B=3, L=8, d=16, seed=5)
    lrm.longmamba.calibrate(m, [calibration], train_len=8)
    with torch.no_grad():
        close(m.longmamba.score, receptive_field_score(m, calibration, step_sizes))
    # Put c between the scores, so both kinds of channel exist whatever the initial weights.
    m.longmamba.config = dataclasses.replace(m.longmamba.config,
                                             channel_threshold=float(m.longmamba.score.median()))
    is_global = m.longmamba.global_channels()
    assert 0 < int(is_global.sum()) < m.longmamba.channels  # both kinds, or the test is moot
    x = inputs(L=30, d=16)
    with torch.no_grad():
        y = m(x)[0]
        close(y, equations(m, x))
        with lrm.longmamba.disabled(m):
            unfiltered = m(x)[0]
    assert (y - unfiltered).abs().max() > 1e-3, "the filter dropped nothing"


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


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_ssm_parameters_take_no_weight_decay(cls):
    m = cls(64, d_state=8, **({"head_dim": 16} if cls is Mamba2 else {}))
    no_decay = {id(p) for grp in param_groups(m, lr=1e-3, weight_decay=0.1)
                if grp["weight_decay"] == 0.0 for p in grp["params"]}
    for name in ("A_log", "D") + (("dt_bias",) if cls is Mamba2 else ()):
        assert id(getattr(m, name)) in no_decay, name
    assert id(m.in_proj.weight) not in no_decay


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

    path = Path(__file__).parents[2] / "configs" / "model" / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text())["model"]["model"]  # an `lra fit` config fragment
    cfg.update(d_model=64, n_layers=1, vocab_size=11, head="lm")  # small, same options
    model = lrm.LRModel(lrm.ModelConfig.from_dict(cfg))
    assert model(torch.randint(0, 11, (1, 9))).shape == (1, 9, 11)
