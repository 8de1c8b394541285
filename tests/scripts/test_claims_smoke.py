"""The claim checks' smoke mode (tiny sizes and steps) runs end to end and writes a report with
the control, the verdict table, both seeds and the wall time (scripts/claims/gdn.py and
scripts/claims/oryx.py, in-process)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CLAIMS = Path(__file__).resolve().parents[2] / "scripts" / "claims"


def _load(name: str):
    sys.path.insert(0, str(CLAIMS))
    spec = importlib.util.spec_from_file_location(f"claims_{name}", CLAIMS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("script", "extra"), [
    ("gdn", ["--models", "gdn", "mamba2"]),
    ("oryx", ["--models", "oryx-gdn", "oryx-gdn (rec only)", "gdn", "--p-attn", "0", "1"]),
])
def test_smoke_mode_writes_a_report(script, extra, tmp_path):
    out = tmp_path / "report.md"
    _load(script).main(["--smoke", "--out", str(out), "--json", str(tmp_path / "r.json"),
                        "--store", str(tmp_path / "store.jsonl"), *extra])
    text = out.read_text()
    assert text.startswith("Command: `python ")
    assert "Control: attention acc" in text and "| claim | verdict |" in text
    assert "Learning-rate sweeps" in text and "seed 0: " in text and "seed 1: " in text
    assert "Wall time of the check" in text
    assert list(tmp_path.glob("r*.json"))
    # every run went into the store; the same command again trains nothing and reports the same
    stored = (tmp_path / "store.jsonl").read_text().splitlines()
    assert len(stored) >= 8  # the control and two models, three rates and a second seed each
    again = tmp_path / "again.md"
    _load(script).main(["--smoke", "--out", str(again), "--store", str(tmp_path / "store.jsonl"),
                        *extra])
    assert (tmp_path / "store.jsonl").read_text().splitlines() == stored

    def verdicts(t: str) -> list[str]:
        return [ln for ln in t.splitlines() if ln.startswith("| ") and "**" in ln]
    assert verdicts(again.read_text()) == verdicts(text)
