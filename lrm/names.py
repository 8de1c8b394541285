"""One wording for every error that rejects a name: a mixer, an option, a config key, a command.

    >>> print(unknown("mixer", "mambaa", ["fox", "mamba", "mamba2"], n=2))
    unknown mixer 'mambaa'. Did you mean 'mamba' or 'mamba2'? Valid mixers: fox, mamba, mamba2.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence


def _join(words: Sequence[str], last: str) -> str:
    """'a', 'a <last> b', 'a, b <last> c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def unknown(kind: str, given: str | Sequence[str], valid: Iterable[str], *, n: int = 1,
            listing: str | None = None, show: Callable[[str], str] = repr,
            show_match: Callable[[str], str] | None = None) -> str:
    """The message for names in ``given`` that are not in ``valid``, as one paragraph.

    It says what was given (``kind``: "mixer", "option", ...), the up to ``n`` closest valid
    names of each (difflib's similarity of at least 0.6), and ends with ``listing``, where the
    full list is: by default "Valid <kind>s: " and every valid name; pass "" to end after the
    hint. ``show`` writes a given name and ``show_match`` a suggested one (default ``show``):
    repr quotes Python names, ``str`` leaves command-line options bare.

        one name:    unknown mixer 'mambaa'. Did you mean 'mamba' or 'mamba2'? <listing>
        several:     unknown options 'nhead' (did you mean 'n_heads'?) and 'bogus'. <listing>
    """
    names = [given] if isinstance(given, str) else list(given)
    valid = list(valid)
    show_match = show_match or show

    def closest(name: str) -> str:
        matches = difflib.get_close_matches(name, valid, n=n)
        return _join([show_match(m) for m in matches], "or") if matches else ""

    if len(names) == 1:
        hint = closest(names[0])
        said = f"unknown {kind} {show(names[0])}." + (f" Did you mean {hint}?" if hint else "")
    else:
        parts = [show(u) + (f" (did you mean {h}?)" if (h := closest(u)) else "") for u in names]
        said = f"unknown {kind}s {_join(parts, 'and')}."
    if listing is None:
        listing = f"Valid {kind}s: {', '.join(valid) or '(none)'}."
    return f"{said} {listing}" if listing else said
