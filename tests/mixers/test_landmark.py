"""The landmark attention mixer (lrm.mixers.landmark) and the landmark tokens the model inserts."""

from __future__ import annotations

import pytest
import torch

import lrm
from lrm.mixers.landmark import LandmarkAttention
from lrm.nn import rope
from lrm.ops.landmark_attn import (
    landmark_attn_quadratic_ref,
)

F64 = dict(atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- the mixer


def test_mixer_matches_the_equations():
    """Grouped mode equals the equations written out: projections, RoPE at absolute positions
    (lrm.nn.rope), the quadratic grouped softmax, o_proj."""
    torch.manual_seed(0)
    m = LandmarkAttention(32, n_heads=2, block_len=3).eval()
    x = torch.randn(2, 19, 32)
    y, _ = m(x)
    q, k, v = (p(x).view(2, 19, 2, 16).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    q, k = rope(q, torch.arange(19)), rope(k, torch.arange(19))
    o = landmark_attn_quadratic_ref(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                    block_len=3).reshape(2, 19, 32)
    torch.testing.assert_close(y, m.o_proj(o), atol=1e-5, rtol=1e-4)
    assert m.landmark_every == 3


@pytest.mark.parametrize("topk", [None, 1, 2])
def test_mixer_streams_exactly_in_float64(topk):
    torch.manual_seed(0)
    m = LandmarkAttention(32, n_heads=2, block_len=3, retrieval_topk=topk).double().eval()
    x = torch.randn(2, 29, 32, dtype=torch.float64)
    with torch.no_grad():
        full, _ = m(x)
        for splits in ([29], [4, 1, 9, 15], [1] * 29):
            s, ys, t = m.init_state(2, dtype=torch.float64), [], 0
            for n in splits:
                y, s = m(x[:, t:t + n], s)
                ys.append(y)
                t += n
            torch.testing.assert_close(torch.cat(ys, 1), full, **F64)
    assert s.k.shape == (2, 29, 2, 16) and m.state_size(29) == 2 * 32 * 29


def test_mixer_retrieval_with_every_block_equals_grouped_mode():
    torch.manual_seed(0)
    grouped = LandmarkAttention(32, n_heads=2, block_len=3).double()
    retr = LandmarkAttention(32, n_heads=2, block_len=3, retrieval_topk=8).double()
    retr.load_state_dict(grouped.state_dict())
    x = torch.randn(2, 35, 32, dtype=torch.float64)  # the last query has 8 earlier blocks
    torch.testing.assert_close(retr(x)[0], grouped(x)[0], **F64)
    retr.retrieval_topk = 2
    assert (retr(x)[0] - grouped(x)[0]).abs().max() > 1e-6


def test_mixer_rejects_bad_options():
    with pytest.raises(ValueError, match="block_len"):
        LandmarkAttention(32, block_len=0)
    with pytest.raises(ValueError, match="retrieval_topk"):
        LandmarkAttention(32, retrieval_topk=0)
    with pytest.raises(ValueError, match="even"):
        LandmarkAttention(30, n_heads=2)
    with pytest.raises(ValueError, match="32"):
        LandmarkAttention(32)(torch.randn(1, 3, 31))


# ----------------------------------------------------------------------------- the model


def lm(pattern=None, block_len=4, topk=None, head="lm", **kw):
    torch.manual_seed(0)
    opts = {"block_len": block_len, "retrieval_topk": topk}
    if pattern:
        cfg = lrm.ModelConfig(pattern=pattern, n_layers=len(pattern), d_model=32,
                              mixer_kwargs={"landmark": opts}, vocab_size=13, head=head, **kw)
    else:
        cfg = lrm.ModelConfig(mixer="landmark", mixer_kwargs=opts, d_model=32, n_layers=2,
                              vocab_size=13, head=head, **kw)
    return lrm.LRModel(cfg).eval()


@pytest.mark.parametrize("topk", [None, 2])
@pytest.mark.parametrize("pattern", [None, ["landmark", "gdn"]], ids=["landmark", "hybrid"])
def test_model_output_has_input_length_and_streams_like_forward(pattern, topk):
    model = lm(pattern, topk=topk)
    tokens = torch.randint(0, 13, (2, 33))
    with torch.no_grad():
        full = model(tokens)
        assert full.shape == (2, 33, 13)
        for splits in ([33], [4, 1, 3, 12, 13], [1] * 33):  # chunks end on and off the blocks
            state, outs, t = model.init_state(2), [], 0
            for n in splits:
                y, state = model.step(tokens[:, t:t + n], state)
                outs.append(y)
                t += n
            torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
        assert int(state[-1]) == 33


def test_model_inserts_landmarks_for_every_layer():
    model = lm(["landmark", "gdn"], block_len=4)
    seen = {}
    for i, block in enumerate(model.blocks):
        def hook(mod, args, out, i=i):
            seen[i] = args[0]  # returns None: the output stays as it is

        block.register_forward_hook(hook)
    tokens = torch.randint(0, 13, (2, 13))
    with torch.no_grad():
        model(tokens)
    # 13 real tokens -> landmarks after tokens 4, 8, 12: 16 positions in every layer
    assert seen[0].shape[1] == seen[1].shape[1] == 16
    emb = model.embed(tokens)
    torch.testing.assert_close(seen[0][:, [4, 9, 14]],
                               model.landmarks.embedding.expand(2, 3, -1))
    torch.testing.assert_close(seen[0][:, [0, 3, 5, 8, 10, 13, 15]],
                               emb[:, [0, 3, 4, 7, 8, 11, 12]])


def test_model_landmark_embedding_learns_and_changes_later_predictions():
    model = lm(block_len=4).train()
    tokens = torch.randint(0, 13, (2, 13))
    out = model(tokens)
    out.square().sum().backward()
    assert model.landmarks.embedding.grad.abs().sum() > 0
    with torch.no_grad():
        model.landmarks.embedding += 1.0
        out2 = model(tokens)
    torch.testing.assert_close(out2[:, :4], out[:, :4])  # before the first landmark
    assert (out2[:, 4:] - out[:, 4:]).abs().amax() > 1e-4


def test_model_pooling_ignores_landmarks_and_padding():
    model = lm(block_len=3, head="classify", n_classes=3)
    tokens = torch.randint(1, 13, (2, 17))
    lengths = torch.tensor([17, 10])
    with torch.no_grad():
        h = model.encode(tokens)
        assert h.shape == (2, 17, 32)
        torch.testing.assert_close(model(tokens), model.head(h.mean(1)))
        padded = tokens.clone()
        padded[1, 10:] = 0
        both = model(padded, lengths)
        torch.testing.assert_close(both[1], model(tokens[1:, :10])[0], atol=1e-5, rtol=1e-5)


def test_model_refuses_what_does_not_make_sense():
    from lrm.model import LandmarkTokens

    model = lm(block_len=4)
    model.blocks[1].mixer.landmark_every = 7  # as if two layers had different block_len
    with pytest.raises(ValueError, match="landmark_every"):
        LandmarkTokens.declared(model.blocks, bidirectional=False)
    with pytest.raises(ValueError, match="causal"):
        lm(bidirectional=True, head="classify", n_classes=2)


def test_models_without_landmark_layers_are_unchanged():
    model = lrm.LRModel(lrm.ModelConfig(mixer="attention", d_model=32, n_layers=1,
                                        vocab_size=5, head="lm"))
    assert model.landmarks is None and len(model.init_state(1)) == 1
