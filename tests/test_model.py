"""The model around the mixers (lrm.model, lrm.config, lrm.optim): building, heads, input checks,
parameter groups, generation.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import lrm
from lrm.model import Bidirectional
from lrm.optim import param_groups


def test_lrm_imports_and_builds_without_lightning():
    code = ("import sys; sys.modules['lightning'] = None; sys.modules['torchmetrics'] = None\n"
            "import lrm; b = lrm.build('attention', d=512)\n"
            "assert type(b).__name__ == 'Block'\n"
            "bad = [m for m in sys.modules if m.startswith(('lightning', 'lra', 'mamba_ssm',"
            " 'fla', 'causal_conv1d', 'triton')) and sys.modules[m] is not None]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ValueError, match="Did you mean 'd_model'") as err:
        lrm.ModelConfig.from_dict({"d_modle": 64})
    assert "n_layers" in str(err.value)


@pytest.mark.parametrize("bad", [
    {"head": "regress"}, {"pooling": "max"}, {"norm": "groupnorm"}, {"n_layers": 0},
    {"norm": "batchnorm", "head": "lm"},
    {"encoder": "conv"},
    {"pattern": ["attention", "attention", "attention"], "n_layers": 4},
    {"pattern": ["attention"], "mixer_kwargs": {"rope": True}},
    {"embed_std": 0.0}, {"embed_std": 0.02, "encoder": "linear"},
])
def test_bad_config_values_raise(bad):
    with pytest.raises(ValueError):
        lrm.ModelConfig(**bad)


def test_embed_std_sets_the_table_and_nothing_else():
    def model(**kw):
        torch.manual_seed(0)
        return lrm.LRModel(lrm.ModelConfig(d_model=64, vocab_size=512, head="lm", **kw))

    default, small = model(), model(embed_std=0.02)
    assert default.embed.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert small.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.allclose(small.embed.weight, 0.02 * default.embed.weight)  # same draw, scaled
    rest = [(n, p) for n, p in default.named_parameters() if not n.startswith("embed.")]
    other = dict(small.named_parameters())
    assert rest and all(torch.equal(p, other[n]) for n, p in rest)


def test_batchnorm_normalises_each_channel_over_batch_and_positions():
    """S4's LRA norm: per channel over (B, L) while training, running statistics in eval. A
    norm over the wrong axis (positions as channels, or per token like LayerNorm) fails."""
    from lrm.nn import make_norm

    torch.manual_seed(0)
    norm = make_norm("batchnorm", 6)
    x = torch.randn(4, 9, 6) * torch.arange(1, 7) + torch.arange(6)  # channel c: mean c, std c+1
    y = norm(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(dim=(0, 1)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 1), unbiased=False), torch.ones(6), atol=1e-3,
                               rtol=0)
    assert y[0, 0].std() > 0.1  # not normalised per token
    norm.eval()  # running statistics: one token's output no longer depends on the others
    alone = norm(x[:1, :1])
    torch.testing.assert_close(alone, norm(x)[:1, :1])
    model = lrm.LRModel(lrm.ModelConfig(mixer="s4d", d_model=8, vocab_size=5, n_classes=2,
                                        norm="batchnorm", bidirectional=True))
    assert model(torch.randint(0, 5, (3, 7))).shape == (3, 2)
    no_decay = {id(p) for g in param_groups(model, lr=1e-3, weight_decay=0.1)
                if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.blocks[0].norm1.weight) in no_decay  # a norm's scale is not decayed


def test_pattern_builds_per_layer_mixers():
    cfg = lrm.ModelConfig(pattern=["attention", "gdn"], n_layers=4, d_model=64, vocab_size=10,
                          n_classes=3, mixer_kwargs={"attention": {"rope": False}})
    model = lrm.LRModel(cfg)
    names = [type(b.mixer).__name__ for b in model.blocks]
    assert names == ["Attention", "GatedDeltaNet", "Attention", "GatedDeltaNet"]
    assert model.blocks[0].mixer.rope is False
    assert model(torch.randint(0, 10, (2, 9))).shape == (2, 3)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_model_layers_are_the_blocks_lrm_build_makes(bidirectional):
    """LRModel builds each layer exactly as lrm.build does: same modules, same parameters."""
    kw = {"d_state": 8, "init": "lin"}
    cfg = lrm.ModelConfig(mixer="s4d", mixer_kwargs=kw, n_layers=1, d_model=16, vocab_size=5,
                          n_classes=2, norm="layernorm", prenorm=False, dropout=0.2,
                          bidirectional=bidirectional)
    torch.manual_seed(0)
    layer = lrm.LRModel(cfg).blocks[0]
    torch.manual_seed(0)
    torch.nn.Embedding(5, 16)  # LRModel draws its embedding before the blocks
    block = lrm.build("s4d", 16, norm="layernorm", prenorm=False, dropout=0.2,
                      bidirectional=bidirectional, **kw)
    assert repr(block) == repr(layer)
    for (n1, p1), (n2, p2) in zip(block.named_parameters(), layer.named_parameters(),
                                  strict=True):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    assert block.mlp is None and block.drop.p == 0.2  # S4D's customary ratio: no MLP
    assert isinstance(block.mixer, Bidirectional) == bidirectional


def test_linear_encoder_reads_tokens_as_intensities():
    model = lrm.LRModel(lrm.ModelConfig(d_model=8, vocab_size=256, n_classes=2,
                                        encoder="linear"))
    proj = model.embed.proj
    x = model.embed(torch.tensor([[0, 255, 51]]))
    # 0 -> -1 and 255 -> +1 (S4's [-1, 1] pixels), then one linear map shared by all
    torch.testing.assert_close(x[0, 0], proj.bias - proj.weight[:, 0])
    torch.testing.assert_close(x[0, 1], proj.bias + proj.weight[:, 0])
    torch.testing.assert_close(x[0, 2], proj.bias - 0.6 * proj.weight[:, 0])
    assert sum(p.numel() for p in model.embed.parameters()) == 16  # not 256 x 8
    assert model(torch.randint(0, 256, (2, 30))).shape == (2, 2)
    with pytest.raises(ValueError, match="vocab_size >= 2"):
        lrm.LRModel(lrm.ModelConfig(vocab_size=1, n_classes=2, encoder="linear"))


def test_classify_mean_pooling_ignores_padding():
    torch.manual_seed(0)
    model = lrm.LRModel(lrm.ModelConfig(d_model=32, vocab_size=10, n_classes=4,
                                        bidirectional=True)).eval()
    tokens = torch.randint(1, 10, (2, 12))
    lengths = torch.tensor([12, 7])
    other = tokens.clone()
    other[1, 7:] = torch.randint(1, 10, (5,))
    with torch.no_grad():
        a, b = model(tokens, lengths), model(other, lengths)
        alone = model(tokens[1:, :7])
    torch.testing.assert_close(a[1], b[1])
    torch.testing.assert_close(a[1:], alone, atol=1e-5, rtol=1e-5)


def test_retrieval_head_and_input_checks():
    model = lrm.LRModel(lrm.ModelConfig(d_model=32, vocab_size=10, n_classes=2,
                                        head="retrieval"))
    x = torch.randint(0, 10, (3, 8))
    assert model(x, tokens2=x).shape == (3, 2)
    with pytest.raises(ValueError, match="tokens2"):
        model(x)
    with pytest.raises(TypeError, match="integer token ids"):
        model(x.float())
    with pytest.raises(ValueError, match="stream"):
        lrm.LRModel(lrm.ModelConfig(vocab_size=10, head="lm", bidirectional=True)).init_state(1)


def test_block_and_model_refuse_bad_input_with_a_clear_error():
    block = lrm.build("attention", d=32)
    with pytest.raises(ValueError, match=r"Block\(d=32\) expects x of shape \(B, L, 32\); got "
                                         r"\(2, 5, 16\)"):
        block(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"batch axis"):
        block(torch.randn(5, 32))
    with pytest.raises(TypeError, match=r"floating-point x .* torch.int64"):
        block(torch.ones(2, 5, 32, dtype=torch.long))
    model = lrm.LRModel(lrm.ModelConfig(d_model=32, n_layers=1, vocab_size=10, head="lm"))
    with pytest.raises(ValueError, match=r"shape \(B, L\); got \(8,\)"):
        model(torch.randint(0, 10, (8,)))
    with pytest.raises(ValueError, match=r"\[0, vocab_size=10\); got values in \[0, 12\]"):
        model(torch.tensor([[0, 3, 12]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[-1, 3]]))


def test_param_groups_follow_tags_and_skip_decay_on_vectors():
    model = lrm.LRModel(lrm.ModelConfig(d_model=32, vocab_size=10, n_classes=2))
    special = model.blocks[0].mixer.q_proj.weight
    lrm.nn.tag(special, weight_decay=0.0, lr=1e-4)
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_id[id(special)] == (1e-4, 0.0)
    assert by_id[id(model.embed.weight)] == (1e-3, 0.0)
    assert by_id[id(model.norm.weight)] == (1e-3, 0.0)
    assert by_id[id(model.blocks[0].mixer.k_proj.weight)] == (1e-3, 0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def _model(name: str, vocab: int = 40) -> lrm.LRModel:
    torch.manual_seed(0)
    return lrm.LRModel(lrm.ModelConfig(mixer=name, d_model=32, n_layers=2, vocab_size=vocab,
                                       head="lm")).eval()


@pytest.mark.parametrize("name", lrm.available())
def test_greedy_generation_equals_recomputing_the_whole_sequence(name):
    """generate() streams with a state; re-running the full forward on the growing sequence
    must pick the same tokens (catches a wrong state hand-over or an off-by-one position)."""
    model = _model(name)
    prompt = torch.randint(0, 40, (2, 9))
    out = model.generate(prompt, 6, temperature=0)
    assert out.shape == (2, 15) and torch.equal(out[:, :9], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_sampling_respects_top_k_and_the_generator():
    model = _model("gdn")
    prompt = torch.randint(0, 40, (3, 5))
    draw = [model.generate(prompt, 8, temperature=1.5, top_k=3,
                           generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])  # seeded: reproducible
    # every sampled token is among the 3 most likely given what came before
    with torch.no_grad():
        logits = model(draw[0])[:, 4:-1]  # the predictions for positions 5..12
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == draw[0][:, 5:, None]).any(-1).all()
    # top_k=1 is greedy whatever the temperature
    assert torch.equal(model.generate(prompt, 5, temperature=2.0, top_k=1),
                       model.generate(prompt, 5, temperature=0))


def test_generate_refuses_what_it_cannot_do():
    classifier = lrm.LRModel(lrm.ModelConfig(d_model=32, vocab_size=10, n_classes=2,
                                             head="classify"))
    with pytest.raises(ValueError, match="head='lm'"):
        classifier.generate(torch.zeros(1, 3, dtype=torch.long), 2)
    model = _model("attention")
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), 2, top_k=0)
    assert torch.equal(model.generate(torch.ones(1, 3, dtype=torch.long), 0),
                       torch.ones(1, 3, dtype=torch.long))
