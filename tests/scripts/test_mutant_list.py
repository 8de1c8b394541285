"""scripts/mutants.py: every planted bug still applies, i.e. its original line occurs exactly
once in its file. A refactor that rewrites a line a mutant targets must move the mutant with it,
or the conformance run reports an error instead of a kill."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def _mutants():
    return load_script("mutants").MUTANTS


@pytest.mark.parametrize("mut", _mutants(), ids=lambda m: m.id)
def test_each_mutant_targets_one_existing_line(mut):
    text = (ROOT / mut.file).read_text()
    assert text.count(mut.original) == 1, f"{mut.id}: original occurs {text.count(mut.original)}x"
    assert mut.replacement != mut.original


def test_each_mutant_names_tests_that_exist():
    """A mutant's tests are pytest node ids; one that no longer exists (a renamed test, a new
    parametrization) makes pytest exit with 4, which the conformance run would count as a
    kill. Every named node must be collected."""
    import subprocess

    muts = _mutants()
    named = {t for m in muts for t in m.tests}
    files = sorted({t.split("::")[0] for t in named})
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *files],
                         cwd=ROOT, capture_output=True, text=True, check=False).stdout
    collected = {ln.strip() for ln in out.splitlines() if "::" in ln}
    missing = sorted(t for t in named if "::" in t and not any(
        c == t or c.startswith(t + "[") for c in collected))
    assert not missing, f"mutants name tests that are not collected: {missing}"


def test_a_partial_run_replaces_its_rows_and_keeps_the_others(tmp_path, monkeypatch):
    """``-k`` runs rewrite only their mutants' rows: a stale row of the chosen mutant is
    replaced, another mutant's row is kept verbatim, a row of a mutant that no longer exists is
    dropped, one the page lacks reads "not run", and the header's count follows the rows."""
    mod = load_script("mutants")
    first, second, third = mod.MUTANTS[:3]
    page = mod.write_doc([
        f"| {first.id} | `x` | stale | survived | **old** |",
        f"| {second.id} | `y` | kept row | killed | `t` |",
        "| gone-mutant | `z` | removed from the list | killed | `t` |",
    ], 1234.0, 7)
    doc = tmp_path / "conformance.md"
    doc.write_text(page)
    monkeypatch.setattr(mod, "DOC", doc)
    out = mod.update_doc([mod.Result(first, "killed", 12, "tests/a.py::b")])
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "| mutant |" not in ln]
    assert rows[0] == mod.doc_row(mod.Result(first, "killed", 12, "tests/a.py::b"))
    assert rows[1] == f"| {second.id} | `y` | kept row | killed | `t` |"
    assert rows[2].startswith(f"| {third.id} |") and "not run" in rows[2]
    assert len(rows) == len(mod.MUTANTS) and "gone-mutant" not in out
    assert f"**2 of {len(mod.MUTANTS)} mutants killed**" in out
    assert "wall time 1234 s" in out and "passed all\n7 test selections" in out
