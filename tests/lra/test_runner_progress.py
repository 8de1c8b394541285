"""The LRA grid's runs say where they stand while they train: the parent reads the run's
metrics file every few minutes and prints the step and the recent training loss; the timeout
still kills the worker's whole process group."""

from __future__ import annotations

import sys
import time

from lra.leaderboard import runner

# a stand-in worker: writes two flushes of Lightning's CSV metrics, then exits (or hangs)
WORKER = """
import pathlib, sys, time
run = pathlib.Path(sys.argv[-1]); (run / "fit").mkdir(parents=True, exist_ok=True)
rows = "step,train/loss,val/acc\\n49,2.5,\\n99,2.0,\\n99,,0.3\\n"
(run / "fit" / "metrics.csv").write_text(rows)
time.sleep(float(sys.argv[-2]))
"""


def test_a_run_in_flight_reports_its_step_and_loss_and_a_hung_one_is_killed(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(runner, "WORKER", [sys.executable, "-c", WORKER, "1.0"])
    seen = []
    rc, _, wall = runner._launch(tmp_path, 30, on_progress=lambda: seen.append(
        runner.training_progress(tmp_path, 2000)), every=0.2)
    assert rc == 0 and wall < 30
    assert seen and seen[-1] == "step 100 of 2000, train loss 2.25 (mean of the last 2 logged)"
    assert runner.training_progress(tmp_path / "nothing", 10) is None
    monkeypatch.setattr(runner, "WORKER", [sys.executable, "-c", WORKER, "60"])
    t0 = time.time()
    rc, _, _ = runner._launch(tmp_path, 1.0, every=0.2)
    assert rc is None and time.time() - t0 < 30
