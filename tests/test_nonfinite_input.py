"""Non-finite inputs (docs/design.md, "Non-finite inputs"): what the mixers do with a NaN, and
the error Block and LRModel give instead; and shape errors that explain only what applies."""

from __future__ import annotations

import pytest
import torch

import lrm
from lrm.model import check_finite

D, L, P = 32, 48, 30  # the bad value sits at position P of sample 0


@pytest.mark.parametrize("name", lrm.available())
def test_a_nan_stays_in_its_sample_and_poisons_it_from_its_position_on(name):
    mixer = lrm.mixer(name, d=D)
    x = torch.randn(3, L, D)
    x[0, P, 3] = float("nan")
    with torch.no_grad():
        y, _ = mixer(x)
    assert torch.isfinite(y[1:]).all(), "a NaN in one sample reached another"
    assert not torch.isfinite(y[0, P:]).all(-1).any(), "a position from the NaN on is finite"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_block_names_the_sample_and_the_position(bad):
    block = lrm.build("s4d", d=D)
    x = torch.randn(4, L, D)
    x[2, 17, 5] = bad
    x[3, 40, 0] = bad
    for training in (True, False):
        block.train(training)
        with pytest.raises(ValueError, match=rf"sample 2, position 17 holds {bad}.*2 of 4 "):
            block(x)
    block.check_finite = False
    y, _ = block(x)  # turned off: the documented spreading
    assert not torch.isfinite(y[2]).all()


def test_lrmodel_checks_its_embedded_input_once():
    model = lrm.LRModel(lrm.ModelConfig(mixer="gdn", d_model=D, n_layers=2, vocab_size=10,
                                        head="lm"))
    assert not any(block.check_finite for block in model.blocks)
    tokens = torch.randint(0, 10, (2, 12))
    poison = torch.zeros(2, 12, D)
    poison[1, 5] = float("nan")
    with model.input_transform(lambda x: x + poison), pytest.raises(
            ValueError, match=r"LRModel .*sample 1, position 5 holds nan"):
        model(tokens)
    assert torch.isfinite(model(tokens)).all()


def test_no_check_and_so_no_sync_in_training_off_the_cpu():
    x = torch.full((2, 4, D), float("nan"), device="meta")  # any read-back would fail
    check_finite(x, "Block", training=True)
    with pytest.raises(RuntimeError, match="meta"):  # outside training it does read back
        check_finite(x, "Block", training=False)


def test_shape_errors_explain_only_what_applies():
    block = lrm.build("attention", d=D)
    with pytest.raises(ValueError) as width:
        block(torch.randn(2, 10, D + 1))
    assert "width 33" in str(width.value) and "d=33" in str(width.value)
    assert "token" not in str(width.value) and "batch axis" not in str(width.value)
    with pytest.raises(ValueError) as ids:
        block(torch.randint(0, 5, (2, 10)))
    assert "token ids" in str(ids.value) and "batch axis" not in str(ids.value)
    with pytest.raises(ValueError) as single:
        block(torch.randn(10, D))
    assert "x[None]" in str(single.value) and "token" not in str(single.value)
