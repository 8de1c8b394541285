"""The registry (lrm.registry) and the did-you-mean messages of lrm.names."""

from __future__ import annotations

import pytest
import torch

import lrm
from lrm.names import unknown


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


VALID = ["attention", "mamba", "mamba2", "s4"]


def test_one_name_gets_its_closest_valid_names_and_the_full_list():
    msg = unknown("mixer", "mambaa", VALID, n=2)
    assert msg == ("unknown mixer 'mambaa'. Did you mean 'mamba' or 'mamba2'? "
                   "Valid mixers: attention, mamba, mamba2, s4.")


def test_several_names_get_a_hint_each():
    msg = unknown("option", ["atention", "zzz"], VALID)
    assert msg == ("unknown options 'atention' (did you mean 'attention'?) and 'zzz'. "
                   "Valid options: attention, mamba, mamba2, s4.")


def test_listing_and_quoting_are_the_callers():
    assert unknown("option", "--x", [], show=str) == "unknown option --x. Valid options: (none)."
    msg = unknown("subcommand", "fitt", ["fit", "test"], listing="",
                  show_match=lambda s: f"`lra {s}`")
    assert msg == "unknown subcommand 'fitt'. Did you mean `lra fit`?"
