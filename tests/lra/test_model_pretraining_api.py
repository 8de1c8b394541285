"""LRModel's API for pretraining: replace_head swaps the output head, input_transform changes
the embedded input inside a ``with`` block and nowhere else (lra.pretrain uses both)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrm import LRModel, ModelConfig


def _model(**kw) -> LRModel:
    torch.manual_seed(0)
    return LRModel(ModelConfig(mixer="attention", d_model=16, n_layers=2, vocab_size=11,
                               **{"head": "lm", **kw}))


def test_replace_head_returns_the_old_one_and_forward_ends_in_the_new():
    model = _model(head="classify", n_classes=3)
    tokens = torch.randint(0, 11, (2, 9))
    new = nn.Linear(16, 5)
    old = model.replace_head(new)
    assert isinstance(old, nn.Linear) and old.out_features == 3
    assert model.head is new and model(tokens).shape == (2, 5)
    torch.testing.assert_close(model(tokens), new(model.pool(model.encode(tokens), None)))
    assert model.state_dict()["head.weight"].shape == (5, 16)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        model.replace_head(lambda h: h)


def test_input_transform_acts_on_the_embedding_inside_the_block_only():
    model = _model().eval()
    tokens = torch.randint(0, 11, (2, 9))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 3] = mask[1, 0] = True
    m = torch.randn(16)
    plain = model.encode(tokens)
    with model.input_transform(lambda x: torch.where(mask[..., None], m, x)):
        masked = model.encode(tokens)
        logits = model(tokens)
    # the same computation by hand: the masked positions' embeddings replaced by m
    x = torch.where(mask[..., None], m, model.embed(tokens))
    for block in model.blocks:
        x, _ = block(x)
    torch.testing.assert_close(masked, model.norm(x))
    torch.testing.assert_close(logits, model.head(masked))
    assert not torch.allclose(masked, plain)
    # causal attention: positions before the first masked one are untouched in sequence 0
    torch.testing.assert_close(masked[0, :3], plain[0, :3])
    torch.testing.assert_close(model.encode(tokens), plain)  # gone after the block


def test_input_transform_is_removed_when_the_block_raises():
    model = _model().eval()
    tokens = torch.randint(0, 11, (1, 5))
    plain = model.encode(tokens)
    with pytest.raises(RuntimeError), model.input_transform(lambda x: x * 0):
        raise RuntimeError("inside")
    torch.testing.assert_close(model.encode(tokens), plain)


def test_input_transform_carries_gradients_to_its_own_parameters():
    model = _model()
    m = nn.Parameter(torch.zeros(16))
    tokens = torch.randint(0, 11, (2, 6))
    mask = torch.rand(2, 6) < 0.5
    mask[:, 0] = True
    with model.input_transform(lambda x: torch.where(mask[..., None], m, x)):
        model.encode(tokens).sum().backward()
    assert m.grad is not None and m.grad.abs().sum() > 0
