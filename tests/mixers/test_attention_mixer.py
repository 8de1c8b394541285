"""The attention mixer (lrm.mixers.attention) against the paper's equations.

(Named apart from tests/ops/test_attention.py, the op's tests: pytest needs distinct module
names.)
"""

from __future__ import annotations

import pytest
import torch
from _helpers import close, heads, inputs, linear, prepare, rope, softmax_attention
from contract_cases import CASES

from lrm.mixers.attention import Attention


def attention_equations(m: Attention, x: torch.Tensor) -> torch.Tensor:
    H = m.n_heads
    q, k, v = (heads(linear(p, x), H) for p in (m.q_proj, m.k_proj, m.v_proj))
    if m.rope:
        q, k = rope(q, m.rope_base), rope(k, m.rope_base)
    o = softmax_attention(q, k, v)
    return linear(m.o_proj, o.flatten(2))


ATTENTION_OPTIONS = {**CASES["attention"], "rope_base_100": {"rope_base": 100.0, "n_heads": 2}}


@pytest.mark.parametrize("kw", ATTENTION_OPTIONS.values(), ids=ATTENTION_OPTIONS.keys())
def test_attention_follows_the_paper(kw):
    m = prepare(Attention(32, n_heads=4, **kw) if "n_heads" not in kw else Attention(32, **kw))
    x = inputs()
    with torch.no_grad():
        close(m(x)[0], attention_equations(m, x))
