"""LongMamba (lrm.ops.longmamba, lrm.longmamba): calibration statistics (also against a loop in
float64), the filter and its gradcheck, its buffers and its streaming semantics on Mamba and
Mamba-2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import F64, assert_f64_close, check_grad, rand

import lrm
import lrm.longmamba as lm
from lrm.ops.longmamba import LongMambaConfig, LongMambaFilter, channel_statistics

MIXERS = {
    "mamba": {"d_state": 8, "chunk_size": 16},
    "mamba2": {"d_state": 8, "head_dim": 16, "chunk_size": 16},
}
T_TR = 8  # a tiny "training length", so that the conformance length 37 is a long input


def _calibrated(name: str, seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = lrm.mixer(name, 64, longmamba=cfg or True, **MIXERS[name]).eval()
    g = torch.Generator().manual_seed(123)
    lm.calibrate(m, [torch.randn(4, T_TR, 64, generator=g) for _ in range(2)], T_TR)
    return m


def _x(L: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, L, 64, generator=torch.Generator().manual_seed(seed))


def test_channel_statistics_follow_the_recipe():
    """Score, clamp and θ against a direct, per-channel transcription of the recipe."""
    g = torch.Generator().manual_seed(0)
    delta = torch.rand(3, 20, generator=g) * 0.2
    delta[0, 5] = 5.0  # an outlier, clamped away by the top-10% clamp
    a = torch.tensor([-0.5, -1.0, -3.0])
    score, theta = channel_statistics(delta, a, 0.10, [30, 80])
    for c in range(3):
        d = delta[c].clone()
        ceiling = d.sort(descending=True).values[1]  # top 2 of 20 are clamped to the 2nd
        d = d.clamp(max=ceiling)
        S = d.sum()
        torch.testing.assert_close(score[c], torch.exp(a[c] * S))
        for i, T in enumerate([30, 80]):
            prof = F.interpolate(d.sort(descending=True).values.view(1, 1, -1), size=T,
                                 mode="linear", align_corners=False).view(-1)
            run = 0.0
            for k in range(T):  # the first index where the running sum exceeds S, plus one
                run += prof[k].item()
                if run > S:
                    break
            torch.testing.assert_close(theta[i, c], prof[k + 1])
            # the tokens kept by θ carry about the training budget
            kept = prof[prof > theta[i, c]].sum()
            assert abs(kept - S) <= prof[0] + 1e-6


def test_filter_zeroes_small_steps_of_global_channels_only():
    f = LongMambaFilter(4, LongMambaConfig(length_factors=(2.0, 4.0)))
    delta = torch.rand(2, 4, 40) * 0.1
    assert torch.equal(f(delta, -torch.ones(4)), delta), "uncalibrated must be the identity"
    f.train_len.fill_(10)
    f.score.copy_(torch.tensor([0.9, 0.01, 0.5, 0.06]))  # channel 1 is local (<= 0.05)
    f.theta.copy_(torch.tensor([[0.02] * 4, [0.05] * 4]))  # θ(20), θ(40)
    out = f(delta, -torch.ones(4))  # L = 40: the θ of the nearest length, 40
    glob = torch.tensor([True, False, True, True])
    drop = glob[:, None] & (delta <= 0.05)
    assert torch.equal(out, delta.masked_fill(drop, 0.0))
    assert torch.equal(out[:, 1], delta[:, 1])
    assert torch.equal(f(delta[..., :10], -torch.ones(4)), delta[..., :10])  # L <= T_tr
    assert torch.equal(f(delta[..., :1], -torch.ones(4)), delta[..., :1])  # decode


@pytest.mark.parametrize("name", list(MIXERS))
def test_calibration_lives_in_buffers_and_checkpoints(name):
    m = _calibrated(name)
    f = m.longmamba
    assert int(f.train_len) == T_TR and f.global_channels().any()
    assert (f.theta > 0).all()
    sd = m.state_dict()
    assert {"longmamba.train_len", "longmamba.score", "longmamba.theta"} <= set(sd)
    torch.manual_seed(7)  # a fresh module with other weights, then the checkpoint
    fresh = lrm.mixer(name, 64, longmamba=True, **MIXERS[name]).eval()
    fresh.load_state_dict(sd)
    x = _x(37)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[0], m(x)[0])


@pytest.mark.parametrize("name", list(MIXERS))
def test_filter_acts_on_long_prefill_only(name):
    m = _calibrated(name)
    x = _x(37)
    with torch.no_grad():
        y_filtered, _ = m(x)
        with lm.disabled(m):
            y_vanilla, _ = m(x)
            short_vanilla, _ = m(x[:, :T_TR])
        short, _ = m(x[:, :T_TR])
        # decode: every call has L = 1, so the filter never acts
        state, ys = m.init_state(2), []
        for t in range(37):
            y, state = m(x[:, t:t + 1], state)
            ys.append(y)
    assert not torch.allclose(y_filtered, y_vanilla, atol=1e-4), "37 > T_tr: must filter"
    torch.testing.assert_close(short, short_vanilla, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat(ys, 1), y_vanilla, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("name", list(MIXERS))
def test_pinned_prefill_length_makes_streaming_equal_the_filtered_prefill(name):
    m = _calibrated(name)
    x = _x(37)
    with torch.no_grad():
        y_full, _ = m(x)  # one call of 37 > T_tr tokens: θ(37)
        with lm.prefill_length(m, 37):
            state, ys, t = m.init_state(2), [], 0
            for n in (1, 6, 17, 13):
                y, state = m(x[:, t:t + n], state)
                ys.append(y)
                t += n
            y_chunked = torch.cat(ys, 1)
            state_tok, ys = m.init_state(2), []
            for t in range(37):
                y, state_tok = m(x[:, t:t + 1], state_tok)
                ys.append(y)
            y_tok = torch.cat(ys, 1)
        assert m.longmamba.prefill_len is None, "the context restores the setting"
    torch.testing.assert_close(y_chunked, y_full, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(y_tok, y_full, atol=2e-4, rtol=1e-3)


def test_calibrate_checks_its_inputs():
    m = lrm.mixer("mamba2", 64, longmamba=True, **MIXERS["mamba2"])
    with pytest.raises(ValueError, match="training length"):
        lm.calibrate(m, [torch.randn(1, 12, 64)], train_len=T_TR)
    assert not m.longmamba.calibrated and m.longmamba._samples is None
    with pytest.raises(ValueError, match="no LongMamba"):
        lm.calibrate(lrm.mixer("mamba2", 64, **MIXERS["mamba2"]), [torch.randn(1, 8, 64)], 8)
    with pytest.raises(TypeError):
        lrm.mixer("mamba", 64, longmamba=3)


def test_lm_model_with_longmamba_layers():
    cfg = lrm.ModelConfig(mixer="mamba2", d_model=64, n_layers=2, vocab_size=11, head="lm",
                          mixer_kwargs={**MIXERS["mamba2"], "longmamba": {"reduce": "max"}})
    torch.manual_seed(0)
    model = lrm.LRModel(cfg).train()
    lm.calibrate(model, [torch.randint(0, 11, (3, T_TR))], T_TR)
    assert model.training, "calibrate restores the mode"
    rows = lm.summary(model)
    assert [r["module"] for r in rows] == ["blocks.0.mixer.longmamba", "blocks.1.mixer.longmamba"]
    assert all(r["train_len"] == T_TR and r["channels"] == 8 for r in rows)
    tokens = torch.randint(0, 11, (2, 40))
    model.eval()
    with torch.no_grad():
        a = model(tokens)
        with lm.disabled(model):
            b = model(tokens)
    assert torch.isfinite(a).all() and not torch.allclose(a, b)


# ----------------------------------------------------------------------------- LongMamba


def _statistics_loop(delta: torch.Tensor, a: torch.Tensor, clamp_top: float,
                     target_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """LongMamba's calibration statistics channel by channel, with plain Python loops."""
    C, T_tr = delta.shape
    scores, thetas = [], [[] for _ in target_lens]
    for c in range(C):
        d = [float(v) for v in delta[c]]
        k = max(1, int(T_tr * clamp_top))
        ceiling = sorted(d, reverse=True)[k - 1]
        d = [min(v, ceiling) for v in d]
        budget = math.fsum(d)
        scores.append(math.exp(float(a[c]) * budget))
        prof = sorted(d, reverse=True)
        for i, T in enumerate(target_lens):
            # linear interpolation of the sorted profile onto T points (half-pixel centres)
            stretched = []
            for j in range(T):
                src = max((j + 0.5) * T_tr / T - 0.5, 0.0)
                lo = min(int(src), T_tr - 1)
                hi = min(lo + 1, T_tr - 1)
                stretched.append(prof[lo] + (src - lo) * (prof[hi] - prof[lo]))
            run, first = 0.0, 0
            for j, v in enumerate(stretched):
                run += v
                if run > budget:
                    first = j
                    break
            thetas[i].append(stretched[min(first + 1, T - 1)])
    return torch.tensor(scores, dtype=F64), torch.tensor(thetas, dtype=F64)


def test_longmamba_statistics_equal_a_loop():
    delta = F.softplus(rand(6, 16, seed=1) - 2)
    a = -torch.exp(rand(6, seed=2))
    lens = [24, 32, 48]
    score, theta = channel_statistics(delta, a, 0.1, lens)
    score_ref, theta_ref = _statistics_loop(delta, a, 0.1, lens)
    assert_f64_close(score, score_ref)
    assert_f64_close(theta, theta_ref)


def test_longmamba_filter_gradcheck():
    f = LongMambaFilter(4, LongMambaConfig(length_factors=(2.0,))).double()
    a = -torch.exp(rand(4, seed=3)) / 8
    f.start_calibration(8)
    f(F.softplus(rand(3, 4, 8, seed=4)), a)
    f.finish_calibration()
    delta = F.softplus(rand(2, 4, 16, seed=5))
    out = f(delta, a)
    assert out.dtype == F64 and (out == 0).any() and (out == delta).any(), "filter is idle"
    check_grad(lambda d: f(d, a), delta)
