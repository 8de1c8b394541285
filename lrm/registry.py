"""The registry: one explicit table from mixer name to class.

Entries are ``"module:Class"`` paths resolved on first use, so ``import lrm`` stays cheap and a
mixer's module is imported only when someone builds it. The registry knows mixers only: the
block around one is built by :func:`lrm.model.build`, which imports from here (never the
other way round). To add a mixer, write
``lrm/mixers/<name>.py`` following the contract in docs/design.md and add one line here; the
conformance suite in ``tests/`` then checks it with no new test code.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from lrm.names import unknown as unknown_names

MIXERS: dict[str, str] = {
    "attention": "lrm.mixers.attention:Attention",
    "s4": "lrm.mixers.s4:S4",
    "s4d": "lrm.mixers.s4d:S4D",
    "mamba": "lrm.mixers.mamba:Mamba",
    "mamba2": "lrm.mixers.mamba2:Mamba2",
    "fox": "lrm.mixers.fox:ForgettingAttention",
    "gdn": "lrm.mixers.gated_deltanet:GatedDeltaNet",
    "landmark": "lrm.mixers.landmark:LandmarkAttention",
    "titans": "lrm.mixers.titans:Titans",
    "oryx": "lrm.mixers.oryx:Oryx",
}

ALIASES: dict[str, str] = {
    "gated_deltanet": "gdn",
    "forgetting_transformer": "fox",
    "mha": "attention",
}

# Upstream spellings of mixer options -> lrm's one spelling (mamba-ssm's ``headdim``, fla's
# ``conv_size``, titans-pytorch's ``conv_width``). Parameter names (state-dict keys) are not
# options and keep upstream's spelling, so upstream weights still load.
OPTION_ALIASES: dict[str, str] = {
    "headdim": "head_dim",
    "conv_size": "d_conv",
    "conv_width": "d_conv",
}


def available() -> list[str]:
    """Names accepted by :func:`lrm.build` and :func:`mixer` (aliases not included)."""
    return sorted(MIXERS)


def canonical(name: str) -> str:
    """Resolve an alias; raise a ValueError listing the valid names for an unknown one."""
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in MIXERS:
        raise ValueError(unknown_names(
            "mixer", key, list(MIXERS) + list(ALIASES), n=3,
            listing=f"Valid names: {', '.join(available())} (lrm.available()); aliases: "
                    f"{', '.join(sorted(ALIASES))}."))
    return key


def mixer_class(name: str) -> type[nn.Module]:
    module, cls = MIXERS[canonical(name)].split(":")
    return getattr(importlib.import_module(module), cls)


def check_kwargs(cls: type, kwargs: dict[str, Any], what: str) -> None:
    """Raise a TypeError naming the valid keyword arguments when ``kwargs`` has unknown ones."""
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p, v in params.items()
             if p not in ("self", "d") and v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"{what} got {unknown_names('option', unknown, valid)}")


def resolve_options(kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """``kwargs`` with every upstream spelling of :data:`OPTION_ALIASES` replaced by lrm's;
    a TypeError when an option is given under both spellings."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        primary = OPTION_ALIASES.get(key, key)
        if primary in out or (primary != key and primary in kwargs):
            spelled = sorted(k for k in kwargs if OPTION_ALIASES.get(k, k) == primary)
            raise TypeError(f"{what} got the option {primary!r} under more than one spelling "
                            f"({', '.join(map(repr, spelled))}); they mean the same thing. "
                            f"Pass it once, as {primary!r}.")
        out[primary] = value
    return out


def mixer(name: str, d: int, **kwargs: Any) -> nn.Module:
    """The bare mixer ``name`` of width ``d``: (B, L, d) -> ((B, L, d), state).

    Options may use an upstream spelling from :data:`OPTION_ALIASES` (``headdim`` for
    ``head_dim``, ...); :func:`build` and ``LRModel`` build their mixers here too.
    """
    cls = mixer_class(name)
    kwargs = resolve_options(kwargs, f"mixer {canonical(name)!r}")
    check_kwargs(cls, kwargs, f"mixer {canonical(name)!r}")
    return cls(d, **kwargs)
