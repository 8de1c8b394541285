"""scripts/pathfinder_curves.py: runs of different batch sizes meet on one axis of images seen."""

from __future__ import annotations

import json

from _helpers import load_script

pcv = load_script("pathfinder_curves")


def _store(tmp_path):
    run = {"task": "pathfinder", "setting": "pathfinder-easy", "status": "ok", "mixer": "s4d",
           "lr": 3e-3, "batch_size": 32, "loss_curve": [[50, 0.70], [100, 0.69]],
           "val_curve": [[100, 0.5]]}
    other = {**run, "task": "listops"}  # not Pathfinder: left out
    failed = {**run, "status": "failed"}  # no curve to show
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"schema": 1, "runs": [run, other, failed]}))
    return path


def test_steps_become_images_seen_with_each_run_own_batch(tmp_path):
    curves = pcv.leaderboard_curves(_store(tmp_path), ("pathfinder-easy",))
    assert len(curves) == 1
    assert curves[0]["loss"] == [(1600, 0.70), (3200, 0.69)]
    assert curves[0]["val"] == [(3200, 0.5)]
    assert curves[0]["label"] == "s4d (pathfinder-easy, lr 0.003)"  # no seed stored: none shown
    seeded = tmp_path / "seeded.json"
    seeded.write_text(json.dumps({"schema": 1, "runs": [
        {**json.loads(_store(tmp_path).read_text())["runs"][0], "seed": s} for s in (0, 1)]}))
    labels = [c["label"] for c in pcv.leaderboard_curves(seeded, ("pathfinder-easy",))]
    assert labels == ["s4d (pathfinder-easy, lr 0.003, seed 0)",
                      "s4d (pathfinder-easy, lr 0.003, seed 1)"]
    assert pcv.leaderboard_curves(_store(tmp_path), ("pathfinder-probe",)) == []
    ctl = tmp_path / "cnn.json"
    ctl.write_text(json.dumps({"batch": 64, "seed": 1, "setting": "pathfinder-easy",
                               "curve": [{"step": 200, "train_loss": 0.69, "val_acc": 0.5}]}))
    (c,) = pcv.control_curves([ctl])
    assert c["loss"] == [(12800, 0.69)] and "seed 1" in c["label"]
    out = pcv.main(["--store", str(_store(tmp_path)), "--controls", str(ctl), "--out",
                    str(tmp_path / "f.png")])
    assert out.stat().st_size > 1000
