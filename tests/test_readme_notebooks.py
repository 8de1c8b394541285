"""The README lists every notebook with what it teaches."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_notebook_is_listed_with_what_it_teaches():
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(
        r"^\| `(notebooks/[\w.]+\.ipynb)` \| (.+?) \|$", (ROOT / "README.md").read_text(),
        flags=re.M)}
    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for nb in notebooks:
        assert nb in rows, f"{nb} is not in the README's notebook table"
        assert len(rows[nb].split()) >= 5, f"{nb}: say what it teaches, not only its name"
    assert sorted(rows) == notebooks, "the README lists a notebook that does not exist"
