"""The mixer contract (docs/design.md), checked for every registry entry in each of its cases,
in float32 and float64; and the compute-dtype rule the float64 checks rely on.

The cases are the table in tests/contract_cases.py, keyed by mixer name (a mixer with no entry
is checked with its defaults); each one is checked here with no new test code.
"""

from __future__ import annotations

import math

import contract_cases
import pytest
import torch
from _helpers import F64

import lrm
from lrm import registry
from lrm.dtypes import compute_dtype, promote
from lrm.model import Bidirectional

D, B, L = 64, 2, 37
SPLITS = [1, 6, 17, 13]  # chunk sizes for the streaming check; odd on purpose


def _cases() -> list:
    cases = []
    for name in lrm.available():
        try:
            registry.mixer_class(name)
        except (ImportError, AttributeError) as err:  # reported by the test, not hidden
            cases.append(pytest.param(name, "import", {"__error__": repr(err)},
                                      id=f"{name}-import"))
            continue
        for vname, kw in contract_cases.CASES.get(name, {"default": {}}).items():
            cases.append(pytest.param(name, vname, kw, id=f"{name}-{vname}"))
    return cases


CASES = _cases()


# The contract's numerical checks run in float32 and in float64. In float64 every mixer computes
# in float64 (docs/design.md, the compute-dtype rule), so the only differences left are round-off:
# a causality leak must be <= 1e-12 and full, chunked and token-by-token must agree to 1e-10.
# (The fp32 tolerances are loose enough to hide a wrong term of size 1e-6; these are not.)
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]
CAUSAL_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=0)}
STREAM_TOL = {torch.float32: dict(atol=2e-4, rtol=1e-3), torch.float64: dict(atol=1e-10, rtol=0)}


def make(name: str, kw: dict, seed: int = 0, dtype: torch.dtype = torch.float32
         ) -> torch.nn.Module:
    if "__error__" in kw:
        pytest.fail(f"mixer {name!r} does not import: {kw['__error__']}")
    torch.manual_seed(seed)
    return registry.mixer(name, D, **kw).to(dtype).eval()


def inputs(seed: int = 1, length: int = L, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, length, D, generator=g).to(dtype)


def state_numel(state) -> int:
    """Floats held per sequence: every tensor of the (possibly nested) state, over B."""
    if state is None:
        return 0
    if isinstance(state, torch.Tensor):
        return state.numel() // B
    return sum(state_numel(s) for s in state)


def flat(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in flat(s)] if state is not None else []


@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_shapes_and_no_state_without_state(name, variant, kw):
    m = make(name, kw)
    x = inputs()
    y, state = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert state is None, "forward without a state must return state=None"
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_rejects_wrong_width(name, variant, kw):
    m = make(name, kw)
    with pytest.raises(ValueError, match=str(D)):
        m(torch.randn(B, 5, D + 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_causality(name, variant, kw, dtype):
    m = make(name, kw, dtype=dtype)
    x = inputs(dtype=dtype)
    t0 = 19
    x2 = x.clone()
    x2[:, t0:] += torch.randn_like(x2[:, t0:])
    with torch.no_grad():
        y1, _ = m(x)
        y2, _ = m(x2)
    assert y1.dtype == dtype
    torch.testing.assert_close(y1[:, :t0], y2[:, :t0], **CAUSAL_TOL[dtype],
                               msg=lambda s: f"output before t={t0} depends on the future: {s}")
    assert not torch.allclose(y1[:, t0:], y2[:, t0:]), "output ignores its input"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_full_equals_chunked_equals_token_by_token(name, variant, kw, dtype):
    m = make(name, kw, dtype=dtype)
    x = inputs(dtype=dtype)
    with torch.no_grad():
        y_full, _ = m(x)
        state = m.init_state(B, dtype=x.dtype)
        before = [t.clone() for t in flat(state)]
        ys, t = [], 0
        for n in SPLITS:
            y, state_new = m(x[:, t:t + n], state)
            if t == 0:  # the state passed in is never mutated in place
                for a, b in zip(before, flat(state), strict=True):
                    assert torch.equal(a, b), "forward mutated the state it was given"
            state, t = state_new, t + n
            ys.append(y)
        y_chunked = torch.cat(ys, dim=1)
        state_tok = m.init_state(B, dtype=x.dtype)
        ys = []
        for t in range(L):
            y, state_tok = m(x[:, t:t + 1], state_tok)
            ys.append(y)
        y_tok = torch.cat(ys, dim=1)
    assert y_full.dtype == y_chunked.dtype == y_tok.dtype == dtype
    tol = STREAM_TOL[dtype]
    torch.testing.assert_close(y_chunked, y_full, **tol, msg=lambda s: f"chunked != full: {s}")
    torch.testing.assert_close(y_tok, y_full, **tol, msg=lambda s: f"token != full: {s}")
    for a, b in zip(flat(state), flat(state_tok), strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda s: f"final states differ: {s}")


@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_state_size_matches_the_state(name, variant, kw):
    m = make(name, kw)
    state = m.init_state(B)
    seen = 0
    with torch.no_grad():
        for n in (5, 16):
            _, state = m(inputs(length=n), state)
            seen += n
            assert state_numel(state) == m.state_size(seen), (
                f"state_size({seen}) = {m.state_size(seen)} but the state holds "
                f"{state_numel(state)} floats per sequence")


@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_gradients_are_finite_and_reach_every_parameter(name, variant, kw):
    m = make(name, kw).train()
    x = inputs().requires_grad_(True)
    y, _ = m(x)
    (y.square().mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"parameter {pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {pname}"
        # (an empty parameter, e.g. zero persistent tokens, has no gradient to carry)
        assert p.numel() == 0 or p.grad.abs().sum() > 0, \
            f"parameter {pname} gets an all-zero gradient"


@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_bidirectional_ignores_padding(name, variant, kw):
    fwd, bwd = make(name, kw, seed=0), make(name, kw, seed=1)
    bi = Bidirectional(fwd, bwd).eval()
    x = inputs()
    lengths = torch.tensor([L, 23])
    x_noise = x.clone()
    x_noise[1, 23:] = torch.randn_like(x_noise[1, 23:])  # different padding content
    with torch.no_grad():
        y, state = bi(x, lengths=lengths)
        y_noise, _ = bi(x_noise, lengths=lengths)
        y_alone, _ = bi(x[1:, :23])
    assert state is None and y.shape == x.shape
    torch.testing.assert_close(y[1, :23], y_noise[1, :23], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[1:, :23], y_alone, atol=2e-4, rtol=1e-3)
    # the backward copy really sees the future: the first output depends on the last input.
    # A gradient, not a perturbation: a decaying mixer (FoX, Mamba) may forget a token 36
    # steps away below fp32 resolution, yet the dependency must exist. A mixer that keeps
    # only some blocks (landmark retrieval, ``retrieval_topk``) may drop the last input's
    # block; it must still see some later input.
    x_req = x.clone().requires_grad_(True)
    y_req, _ = bi(x_req, lengths=lengths)
    (grad,) = torch.autograd.grad(y_req[0, 0].sum(), x_req)
    later = slice(1, None) if kw.get("retrieval_topk") else slice(-1, None)
    assert grad[0, later].abs().sum() > 0, "the first output ignores the inputs after it"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("name", "variant", "kw"), CASES)
def test_model_forward_backward(name, variant, kw, dtype):
    if "__error__" in kw:
        pytest.fail(f"mixer {name!r} does not import: {kw['__error__']}")
    torch.manual_seed(0)
    cfg = lrm.ModelConfig(mixer=name, mixer_kwargs=kw, d_model=D, n_layers=2, vocab_size=11,
                          head="lm")
    model = lrm.LRModel(cfg).to(dtype)
    tokens = torch.randint(0, 11, (B, L))
    logits = model(tokens)
    assert logits.shape == (B, L, 11) and logits.dtype == dtype
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
    assert math.isfinite(loss.item())
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.numel() == 0 or p.grad.abs().sum() > 0, f"{pname} gets an all-zero gradient"
    # streaming through the whole model equals the full forward (fp32 only: bf16 rounding
    # differs between the two orders of summation)
    if dtype == torch.float32:
        model.eval()
        with torch.no_grad():
            full = model(tokens)
            state = model.init_state(B)
            a, state = model.step(tokens[:, :20], state)
            b, state = model.step(tokens[:, 20:], state)
        torch.testing.assert_close(torch.cat([a, b], 1), full, atol=2e-4, rtol=1e-3)


def test_every_case_names_a_registered_mixer():
    """A key of the case table that names no registered mixer (a typo, a renamed mixer) would
    leave that mixer checked with its defaults only, and its cases with none."""
    table = contract_cases.CASES
    unknown = sorted(set(table) - set(lrm.available()))
    assert not unknown, f"tests/contract_cases.py has cases for unregistered mixers {unknown}"
    assert all(table.values()), "a mixer's entry in tests/contract_cases.py has no case"


def test_compute_dtype_rule():
    bf, f32 = torch.ones(1, dtype=torch.bfloat16), torch.ones(1)
    assert compute_dtype(bf) == torch.float32 and compute_dtype(bf, None) == torch.float32
    assert compute_dtype(f32) == torch.float32 and compute_dtype(bf, f32.double()) == F64
    assert compute_dtype(torch.ones(1, dtype=torch.long)) == torch.float32
    assert promote(None) == promote(torch.bfloat16) == torch.float32 and promote(F64) == F64
