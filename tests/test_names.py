"""lrm.names.unknown: the one message for a name that is not in a list."""

from __future__ import annotations

from lrm.names import unknown

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
