"""The core of lrm: registry and config errors, model heads, optimizer groups, kernel dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lrm
from lrm.model import Bidirectional
from lrm.ops import _kernels
from lrm.ops.causal_conv import causal_conv1d, causal_conv1d_recurrent_ref, causal_conv1d_ref
from lrm.optim import param_groups


def test_lrm_imports_and_builds_without_lightning():
    code = ("import sys; sys.modules['lightning'] = None; sys.modules['torchmetrics'] = None\n"
            "import lrm; b = lrm.build('attention', d=512)\n"
            "assert type(b).__name__ == 'Block'\n"
            "bad = [m for m in sys.modules if m.startswith(('lightning', 'lra', 'mamba_ssm',"
            " 'fla', 'causal_conv1d', 'triton')) and sys.modules[m] is not None]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_mixer_lists_valid_names():
    with pytest.raises(ValueError, match="Did you mean 'attention'") as err:
        lrm.build("atention", d=64)
    for name in lrm.available():
        assert name in str(err.value)


def test_unknown_mixer_option_lists_valid_options():
    with pytest.raises(TypeError, match="n_heads"):
        lrm.mixer("attention", d=64, nheads=2)


# (mixer, upstream spelling, lrm's spelling, a value other than the default, other options)
OPTION_ALIAS_CASES = [
    ("mamba2", "headdim", "head_dim", 16, {"d_state": 4}),
    ("gdn", "conv_size", "d_conv", 3, {"head_dim": 16}),
    ("oryx", "conv_size", "d_conv", 3, {"head_dim": 16}),
    ("titans", "conv_width", "d_conv", 3, {"head_dim": 16}),
]


def _same_module(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert type(a) is type(b) and repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name, alias, primary, value, other", OPTION_ALIAS_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in OPTION_ALIAS_CASES])
def test_upstream_option_spelling_builds_the_same_mixer(name, alias, primary, value, other):
    assert lrm.registry.OPTION_ALIASES[alias] == primary

    def build(how, key):
        torch.manual_seed(0)
        if how == "mixer":
            return lrm.mixer(name, 32, **other, **{key: value})
        if how == "build":
            return lrm.build(name, 32, **other, **{key: value})
        cfg = lrm.ModelConfig(pattern=[name], n_layers=1, d_model=32, vocab_size=5, n_classes=2,
                              mixer_kwargs={name: {**other, key: value}})
        return lrm.LRModel(cfg)

    for how in ("mixer", "build", "model"):
        _same_module(build(how, alias), build(how, primary))
    # the value reached the mixer: the alias is not silently dropped for the default
    torch.manual_seed(0)
    default = lrm.mixer(name, 32, **other)
    assert repr(default) != repr(build("mixer", alias))


@pytest.mark.parametrize("name, alias, primary, value, other", OPTION_ALIAS_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in OPTION_ALIAS_CASES])
def test_both_spellings_of_an_option_are_an_error(name, alias, primary, value, other):
    with pytest.raises(TypeError, match=f"'{primary}' under more than one spelling") as err:
        lrm.mixer(name, 32, **other, **{alias: value, primary: value})
    assert repr(alias) in str(err.value)
    cfg = lrm.ModelConfig(mixer=name, n_layers=1, d_model=32, vocab_size=5, n_classes=2,
                          mixer_kwargs={**other, alias: value, primary: value})
    with pytest.raises(TypeError, match="more than one spelling"):
        lrm.LRModel(cfg)


def test_no_mixer_takes_an_upstream_spelling():
    """Every mixer option has lrm's one spelling; the upstream one lives in the alias table."""
    import inspect

    for name in lrm.available():
        params = inspect.signature(lrm.registry.mixer_class(name).__init__).parameters
        assert not set(params) & set(lrm.registry.OPTION_ALIASES), name


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ValueError, match="Did you mean 'd_model'") as err:
        lrm.ModelConfig.from_dict({"d_modle": 64})
    assert "n_layers" in str(err.value)


@pytest.mark.parametrize("bad", [
    {"head": "regress"}, {"pooling": "max"}, {"norm": "batchnorm"}, {"n_layers": 0},
    {"encoder": "conv"},
    {"pattern": ["attention", "attention", "attention"], "n_layers": 4},
    {"pattern": ["attention"], "mixer_kwargs": {"rope": True}},
])
def test_bad_config_values_raise(bad):
    with pytest.raises(ValueError):
        lrm.ModelConfig(**bad)


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


def test_backend_rule(monkeypatch):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        _kernels.use_kernel("op", "fast", "causal_conv1d_fn", x)
    assert _kernels.use_kernel("op", "auto", "causal_conv1d_fn", x) is False
    assert _kernels.use_kernel("op", "ref", "causal_conv1d_fn", x) is False
    with pytest.raises(RuntimeError, match="not all CUDA"):
        _kernels.use_kernel("op", "kernel", "causal_conv1d_fn", x)
    monkeypatch.setenv("LRM_BACKEND", "kernel")
    with pytest.raises(RuntimeError, match="backend='kernel'"):
        causal_conv1d(torch.randn(1, 4, 5), torch.randn(4, 3))
    monkeypatch.setenv("LRM_BACKEND", "turbo")
    with pytest.raises(ValueError, match="LRM_BACKEND"):
        _kernels.resolve_backend("auto")


def test_every_kernel_entry_is_dispatched_by_an_op():
    """_kernels.py lists only kernels that some op in lrm/ops/ asks for by name."""
    ops = Path(_kernels.__file__).parent
    sources = "".join(p.read_text() for p in ops.glob("*.py") if p.name != "_kernels.py")
    unused = [name for name in _kernels._KERNELS if f'"{name}"' not in sources]
    assert not unused, f"kernel entries no op dispatches to: {unused}"


def test_kernel_flags_follow_what_imports(monkeypatch):
    """has(package) is True iff one of the package's kernels imports; the HAS_* flags say the
    same; a kernel whose import fails is None, with the reason kept."""
    imports = {"chunk_gdn2"}  # an fla that serves GDN-2 only
    monkeypatch.setattr(_kernels, "get", lambda name: (lambda: None) if name in imports else None)
    assert _kernels.has("fla") is True and _kernels.HAS_FLA is True
    assert _kernels.has("mamba_ssm") is False and _kernels.HAS_MAMBA_SSM is False
    imports.clear()
    assert _kernels.has("fla") is False and _kernels.HAS_FLA is False
    with pytest.raises(KeyError, match="unknown kernel package"):
        _kernels.has("numpy")
    monkeypatch.undo()
    monkeypatch.setitem(_kernels._KERNELS, "test_missing", ("nopkg", "lrm.no_such_module", "f"))
    monkeypatch.setitem(_kernels._KERNELS, "test_present", ("torch", "torch.nn.functional",
                                                             "silu"))
    assert _kernels.get("test_missing") is None
    assert "ModuleNotFoundError" in _kernels._IMPORT_ERRORS["test_missing"]
    assert _kernels.get("test_present") is torch.nn.functional.silu


def test_dispatch_passes_the_state_under_each_kernels_own_name(monkeypatch):
    """lrm's ops say initial_state / return_final_state; each kernel package has its own names
    (mamba-ssm: return_last_state, initial_states / return_final_states; fla:
    output_final_state). A recording stand-in for every kernel checks the translation on CPU."""
    from lrm.ops.delta_rule import gated_delta_rule, gdn2
    from lrm.ops.selective_scan import selective_scan
    from lrm.ops.ssd import ssd

    calls: dict[str, tuple[tuple, dict]] = {}

    def fake(name):
        def kernel(*args, **kwargs):
            calls[name] = (args, kwargs)
            return torch.zeros(1), torch.zeros(1)
        return kernel

    monkeypatch.setattr(_kernels, "use_kernel", lambda *a, **kw: True)
    monkeypatch.setattr(_kernels, "get", fake)
    B, L, d, n = 1, 5, 4, 3
    u = torch.randn(B, d, L)
    selective_scan(u, u, -torch.ones(d, n), torch.randn(B, n, L), torch.randn(B, n, L),
                   return_final_state=True)
    assert calls["selective_scan_fn"][1] == {"return_last_state": True}
    x, h0 = torch.randn(B, L, 2, 4), torch.randn(B, 2, 4, n)
    ssd(x, torch.rand(B, L, 2), -torch.ones(2), torch.randn(B, L, 1, n), torch.randn(B, L, 1, n),
        4, initial_state=h0, return_final_state=True)
    kw = calls["mamba_chunk_scan_combined"][1]
    assert kw["initial_states"] is h0 and kw["return_final_states"] is True
    assert not {"initial_state", "return_final_state"} & set(kw)
    q, g, h0 = torch.randn(B, L, 2, 4), torch.rand(B, L, 2), torch.randn(B, 2, 4, 4)
    # no gradient and T <= 64: fla's fused recurrent kernels (the chunk ones take the same names)
    for name, op, gates in (("fused_recurrent_gated_delta_rule", gated_delta_rule, (g, g)),
                            ("fused_recurrent_gdn2", gdn2, (q, q, q))):
        op(q, q, q, *gates, initial_state=h0, return_final_state=True)
        kw = calls[name][1]
        assert kw["output_final_state"] is True and "return_final_state" not in kw, name
        torch.testing.assert_close(kw["initial_state"], h0)


@pytest.mark.parametrize("width", [1, 2, 4, 5])
def test_causal_conv_ref_equals_loop(width):
    torch.manual_seed(width)
    x, w, b = torch.randn(2, 6, 11), torch.randn(6, width), torch.randn(6)
    state = torch.randn(2, 6, width - 1)
    for st in (None, state):
        y, s = causal_conv1d_ref(x, w, b, "silu", st)
        y2, s2 = causal_conv1d_recurrent_ref(x, w, b, "silu", st)
        torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s, s2)
    # streaming in two pieces equals one call
    y_full, s_full = causal_conv1d_ref(x, w, b, None)
    y_a, s_a = causal_conv1d_ref(x[..., :1], w, b, None)
    y_b, s_b = causal_conv1d_ref(x[..., 1:], w, b, None, s_a)
    torch.testing.assert_close(torch.cat([y_a, y_b], -1), y_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_b, s_full)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_causal_conv_kernel_matches_ref():
    if not _kernels.HAS_CAUSAL_CONV1D:
        pytest.skip("causal-conv1d is not installed")
    x, w, b = (t.cuda() for t in (torch.randn(2, 64, 300), torch.randn(64, 4), torch.randn(64)))
    y_k, s_k = causal_conv1d(x, w, b, "silu", backend="kernel")
    y_r, s_r = causal_conv1d(x, w, b, "silu", backend="ref")
    torch.testing.assert_close(y_k, y_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_k, s_r)
