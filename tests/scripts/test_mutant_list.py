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
