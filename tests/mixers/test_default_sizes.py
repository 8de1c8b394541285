"""Default sizes scale with d: at every width, each mixer's default layer holds about as many
parameters, and its recurrent state about as many floats, as its neighbours'.

A mixer whose paper fixes a head size (GDN's K = 256, Mamba-2's N = 128, ...) derives it from d
below the paper's width (each mixer's docstring states its rule). A fixed size breaks out at
small d: GDN with K = 256 gave a d = 32 layer 6.2 times attention's parameters and a state 110
times Mamba's; both tests below fail on it.

Measured with the defaults (a layer = ``lrm.build(name, d)``, the Block with its customary MLP;
attention's is 12 d²):

    layer / attention's    d = 32   256   1024        fixed-size state / d   d = 32   256   1024
    s4, s4d                  0.35  0.19   0.17        gdn                        21   105    393
    mamba                    0.79  0.55   0.53        mamba                      38    38     38
    mamba2                   0.64  0.59   0.52        mamba2                     41   265    263
    attention, landmark      1.00  1.00   1.00        s4, s4d                    64    64     64
    oryx                     1.07  1.04   1.04        titans                    105   393    393
    fox                      1.10  1.09   1.09
    gdn                      1.21  1.17   1.17
    titans                   1.66  1.55   1.52
"""

from __future__ import annotations

import pytest
import torch

import lrm

WIDTHS = (32, 256, 1024)
# A layer without an MLP (S4, Mamba) sits low, S4's at 1/6 of attention's at d = 1024; Titans
# (attention plus a memory) sits high, at 1.5-1.7 times.
LAYER_RANGE = (1 / 8, 2.0)
# The fixed-size states of the papers' own configurations (d = 1024) span a factor of 10 (Mamba's
# 38 d against GDN's and Titans' 393 d).
STATE_FACTOR = 16
L, L2 = 1024, 4096  # a state whose size differs between L and L2 is a cache, not a fixed state


def _layer(name: str, d: int) -> torch.nn.Module:
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        return lrm.build(name, d=d)


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("d", WIDTHS)
def test_every_default_layer_is_within_range_of_attention(d):
    ref = _n_params(_layer("attention", d))
    ratios = {name: _n_params(_layer(name, d)) / ref for name in lrm.available()}
    lo, hi = LAYER_RANGE
    out = {n: round(r, 2) for n, r in ratios.items() if not lo <= r <= hi}
    assert not out, (f"at d={d} these default layers hold a share of attention's parameters "
                     f"outside [{lo}, {hi}]: {out}")


@pytest.mark.parametrize("d", WIDTHS)
def test_default_fixed_size_states_are_within_range_of_each_other(d):
    sizes = {}
    for name in lrm.available():
        m = _layer(name, d).mixer
        if m.state_size(L) == m.state_size(L2):
            sizes[name] = m.state_size(L)
    assert {"mamba", "mamba2", "gdn", "s4"} <= set(sizes)
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    assert sizes[large] <= STATE_FACTOR * sizes[small], (
        f"at d={d} the default state of {large} ({sizes[large]} floats) is more than "
        f"{STATE_FACTOR} times that of {small} ({sizes[small]}): {sizes}")
