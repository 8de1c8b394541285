"""The GPU scripts' dry runs (DRY_RUN=1: tiny sizes on the CPU) go through end to end, so a call
on a lent GPU is not spent finding a typo: the recall arena writes its store and page, the S4
ListOps recipe writes its epoch clock, the LRA grid writes its store."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _dry(script: str, out: Path) -> None:
    env = dict(os.environ, DRY_RUN="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "device" / script), str(out)],
                          env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_recall_arena_dry_run(tmp_path):
    _dry("recall_arena.sh", tmp_path)
    runs = json.loads((tmp_path / "recall_runs.json").read_text())["runs"]
    assert runs and all(r["status"] == "ok" for r in runs), runs
    assert {r["device_type"] for r in runs} == {"cpu"}
    page = (tmp_path / "recall.md").read_text()
    assert "## MQAR" in page and "## Missing cells" in page
    assert (tmp_path / "recall_lr.png").stat().st_size > 1000


@pytest.mark.slow
def test_s4_listops_dry_run(tmp_path):
    _dry("s4_listops.sh", tmp_path)
    clock = json.loads((tmp_path / "epochs.json").read_text())
    assert clock["steps_per_epoch"] == 8 and clock["samples"], clock
    assert "T4" in clock["published"]
    # 4 steps of an 8-step epoch: the time cap's validation is no epoch's end
    assert clock["epochs"] and clock["epochs"][-1]["complete"] is False, clock["epochs"]
    (rec,) = json.loads((tmp_path / "leaderboard_runs.json").read_text())["runs"]
    assert rec["status"] == "ok" and rec["mixer"] == "s4", rec.get("error")


@pytest.mark.slow
def test_lra_grid_dry_run(tmp_path):
    _dry("lra_grid.sh", tmp_path)
    runs = json.loads((tmp_path / "leaderboard_runs.json").read_text())["runs"]
    assert sorted(r["mixer"] for r in runs) == ["attention", "s4d"]
    assert all(r["status"] == "ok" and r["steps"] == 2 for r in runs), runs
    assert "2 records, 2 ok" in (tmp_path / "lra.log").read_text()

