"""A killed LRA grid run goes on where it stopped: the next `lra leaderboard` finds the run's
folder (same config, rate and seed) by its checkpoint, resumes `lra fit` from it and records the
same result as a run that was never stopped."""

from __future__ import annotations

import json
import sys

import torch
import yaml

from lra import leaderboard as lb
from lra.data.fixtures import write_listops


def killing_worker(hook: str, when: str) -> list[str]:
    """The worker, with ``LRAModule.<hook>`` patched to end the process abruptly (no cleanup,
    as kill -9) once the expression ``when`` holds after the hook has run."""
    return [sys.executable, "-c", f"""
import os, sys
from lra.module import LRAModule

hook = LRAModule.{hook}
def kill_when(self, *args):
    hook(self, *args)
    if {when}:
        os._exit(9)
LRAModule.{hook} = kill_when

from lra.leaderboard.runner import worker
worker(sys.argv[1])
"""]


# after the third optimizer step, one step before the end
KILLED_WORKER = killing_worker("on_train_batch_end", "self.trainer.global_step == 3")
# after the first test batch: fit finished, its test pass did not
KILLED_IN_TEST = killing_worker("on_test_batch_end", "True")


def one(tmp_path, runs: str, budget_minutes: float | None = None):
    return lb.run_one("attention", "listops", setting="t", quick=True,
                      data_dir=tmp_path / "data", max_steps=4, budget_minutes=budget_minutes,
                      runs_dir=tmp_path / runs,
                      overrides={"model": {"model": {"d_model": 16}},
                                 "data": {"init_args": {"batch_size": 4}}},
                      timeout=300, config_dir=lb.REPO / "configs", lr=3e-3, seed=0)


def test_a_killed_run_resumes_in_its_folder_to_the_same_result(tmp_path, monkeypatch):
    write_listops(tmp_path / "data", n=(32, 8, 8))
    straight = one(tmp_path, "straight")
    assert straight["status"] == "ok", straight["error"]
    assert "resumed_from_step" not in straight

    real = lb.runner.WORKER
    monkeypatch.setattr(lb.runner, "WORKER", KILLED_WORKER)
    killed = one(tmp_path, "runs")
    assert killed["status"] == "error" and "worker exited 9" in killed["error"]
    assert killed["steps"] < 4
    folder = tmp_path / "runs" / "t" / killed["run_dir"].rsplit("/", 1)[-1]
    assert (folder / "checkpoints" / "last.ckpt").is_file()

    monkeypatch.setattr(lb.runner, "WORKER", real)
    resumed = one(tmp_path, "runs")
    assert resumed["status"] == "ok", resumed["error"]
    assert resumed["run_dir"] == killed["run_dir"]  # the same folder, not a new one
    # killed between step 3's batch and its validation: a step's last.ckpt is written after
    # the step's validation, so the run goes on from step 2 and validates step 3 after all
    assert resumed["resumed_from_step"] == 2
    assert len(list((tmp_path / "runs" / "t").iterdir())) == 1
    for key in ("steps", "best_val", "best_val_step", "val_curve", "test", "loss_curve"):
        assert resumed[key] == straight[key], key
    # the end state, bit for bit (the accuracies of so tiny a run could agree by chance)
    ends = [torch.load(tmp_path / r / "t" / rec["run_dir"].rsplit("/", 1)[-1] / "checkpoints"
                       / "last.ckpt", weights_only=True) for r, rec in (("straight", straight),
                                                                       ("runs", resumed))]
    assert ends[0]["global_step"] == ends[1]["global_step"] == 4
    for k, v in ends[0]["state_dict"].items():
        assert torch.equal(v, ends[1]["state_dict"][k]), k
    assert [s for s, _ in resumed["val_curve"]] == [1, 2, 3, 4]  # each step once
    # the fit logger appended: the first sitting's rows are still there
    cfg = yaml.safe_load((folder / "fit.yaml").read_text())
    assert cfg["trainer"]["logger"][0]["class_path"] == "lra.csv_logger.CSVLogger"


def test_a_finished_or_different_run_is_never_resumed(tmp_path):
    write_listops(tmp_path / "data", n=(32, 8, 8))
    first = one(tmp_path, "runs")
    assert first["status"] == "ok", first["error"]
    parent = tmp_path / "runs" / "t"
    (folder,) = parent.iterdir()
    cfg = yaml.safe_load((folder / "fit.yaml").read_text())
    assert lb.runner.unfinished_run(parent, "attention", "listops", cfg) is None  # finished
    (folder / "worker.json").unlink()  # as if killed during its test
    assert lb.runner.unfinished_run(parent, "attention", "listops", cfg) == folder
    other_lr = {**cfg, "model": {**cfg["model"], "lr": 1e-2}}
    other_seed = {**cfg, "seed_everything": 1}
    other_model = {**cfg, "model": {**cfg["model"],
                                    "model": {**cfg["model"]["model"], "d_model": 32}}}
    for other in (other_lr, other_seed, other_model):
        assert lb.runner.unfinished_run(parent, "attention", "listops", other) is None
    assert lb.runner.unfinished_run(parent, "fox", "listops", cfg) is None


def test_a_run_killed_during_its_test_is_tested_again_and_recorded(tmp_path, monkeypatch):
    # the planted failure: the killed sitting's test/ folder sends the next sitting's metrics
    # elsewhere, and the run records "no test/acc" although its test passed
    write_listops(tmp_path / "data", n=(32, 8, 8))
    # a time cap far beyond 4 steps: it brings Lightning's Timer, whose count fit_s resumes
    straight = one(tmp_path, "straight", budget_minutes=30)
    assert straight["status"] == "ok", straight["error"]

    real = lb.runner.WORKER
    monkeypatch.setattr(lb.runner, "WORKER", KILLED_IN_TEST)
    killed = one(tmp_path, "runs", budget_minutes=30)
    assert killed["status"] == "error" and "worker exited 9" in killed["error"]
    assert killed["steps"] == 4  # fit had finished
    folder = tmp_path / "runs" / "t" / killed["run_dir"].rsplit("/", 1)[-1]
    assert (folder / "test").is_dir()  # what the killed test pass left behind
    # the killed sitting's training time, by the Timer in its checkpoint, set to 1000 s: as if
    # it had trained long, so that this sitting's few seconds cannot pass for it
    ckpt = folder / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["callbacks"]["Timer"]["time_elapsed"]["train"] > 0
    state["callbacks"]["Timer"]["time_elapsed"]["train"] = 1000.0
    torch.save(state, ckpt)

    monkeypatch.setattr(lb.runner, "WORKER", real)
    resumed = one(tmp_path, "runs", budget_minutes=30)
    assert resumed["status"] == "ok", resumed["error"]
    assert resumed["run_dir"] == killed["run_dir"]
    assert resumed["resumed_from_step"] == 4  # nothing left to train
    assert resumed["test"] == straight["test"]
    assert not (folder / "test" / "test").exists()
    # the fit time counts the killed sitting's training, not only this sitting's restore-and-stop
    assert json.loads((folder / "worker.json").read_text())["fit_s_before"] == 1000.0
    assert 1000.0 < resumed["fit_s"] < 1000.0 + resumed["wall_s"]
