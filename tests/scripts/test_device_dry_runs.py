"""The GPU scripts' dry runs (DRY_RUN=1: tiny sizes on the CPU) go through end to end, so a call
on a lent GPU is not spent finding a typo: the recall arena writes its store and page, the S4
ListOps recipe writes its epoch clock, the LRA grid writes its store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_profile_step_dry_run_times_each_phase(tmp_path):
    """scripts/device/profile_step.py (the S4 recipe's step, timed by phase and profiled) runs
    its whole path on a CPU at tiny sizes."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "device" / "profile_step.py"),
                           str(tmp_path), "--dry-run"], capture_output=True, text=True,
                          timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "profile_step.json").read_text())
    ms = got["ms_median"]
    assert set(ms) == {"forward", "backward", "optimizer", "step"} and ms["step"] > 0
    assert abs(ms["step"] - ms["forward"] - ms["backward"] - ms["optimizer"]) < 0.2 * ms["step"]
    assert got["params"] > 0 and got["ms_per_step_unsynced"] > 0
    assert "by cpu_time_total" in (tmp_path / "profile_step.txt").read_text()

