"""scripts/claims/spt.py's tasks: the `pathfinder-easy-bn` variant runs the leaderboard setting's
model and data through the real `lra` commands, and a smoke run's small data never lands where a
real run would find it (the Pathfinder loader takes any generated set in its folder)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

CLAIMS = Path(__file__).resolve().parents[2] / "scripts" / "claims"


def _spt():
    sys.path.insert(0, str(CLAIMS))
    spec = importlib.util.spec_from_file_location("claims_spt_tasks", CLAIMS / "spt.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _opts(cmd: list[str]) -> dict[str, str]:
    """The last value of every --option in one lra command (later ones win, as in the CLI)."""
    return {a: b for a, b in itertools.pairwise(cmd) if a.startswith("--")}


def _fake_run(seen: list, stop_at: dict[str, int] | None = None):
    """A stand-in for ``spt._run``: records the commands and leaves what the real ones leave
    (``last.ckpt`` at the step each stage reaches, ``stop_at[stage]`` if given, and the
    chain's ``times.json``)."""
    import json

    import torch

    def run(cmds, cwd, log):
        seen.extend(cmds)
        for c in cmds:
            if c[0] == "test":
                continue
            o = _opts(c)
            if "--ckpt_path" in o:  # a resumed stage: its folder is its config's
                folder = Path(o["--config"]).parent
                steps = int(folder.joinpath("max_steps").read_text())
            else:
                folder = cwd / "runs" / ("pretrain" if c[0] == "pretrain" else "lra") / "version_0"
                steps = int(o["--trainer.max_steps"])
                folder.mkdir(parents=True, exist_ok=True)
                folder.joinpath("max_steps").write_text(str(steps))
                folder.joinpath("config.yaml").write_text("")
            (folder / "checkpoints").mkdir(exist_ok=True)
            step = min(steps, (stop_at or {}).get(c[0], steps))
            torch.save({"global_step": step}, folder / "checkpoints" / "last.ckpt")
        (cwd / "times.json").write_text(json.dumps([1.0] * len(cmds)))
        return [1.0] * len(cmds)

    return run


def test_a_killed_chain_resumes_each_stage_from_its_last_checkpoint(monkeypatch, tmp_path):
    spt = _spt()
    seen = []
    kw = dict(lr=3e-3, seed=0, steps=3000, pretrain=1000, data_dir=tmp_path, out=tmp_path)
    # the first sitting stops inside the fit (Lightning ends a SIGTERM-ed run quietly): not a run
    monkeypatch.setattr(spt, "_run", _fake_run(seen, {"fit": 600}))
    with pytest.raises(RuntimeError, match="fit stopped at step 600 of 2000; run the check again"):
        spt.chain("pathfinder-easy-bn", "s4d", True, **kw)
    assert [c[0] for c in seen] == ["pretrain", "fit", "test"]
    # the second goes on from the fit's checkpoint and does not pretrain again
    seen.clear()
    monkeypatch.setattr(spt, "_run", _fake_run(seen))
    spt.chain("pathfinder-easy-bn", "s4d", True, **kw)
    fit, test = seen
    assert test[0] == "test" and fit[0] == "fit" and _opts(fit)["--ckpt_path"].endswith(
        "lra/version_0/checkpoints/last.ckpt") and _opts(fit)["--config"].endswith(
        "lra/version_0/config.yaml")
    # a stage killed before its first checkpoint starts again from nothing, in version_0
    folder = tmp_path / "pathfinder-easy-bn-N3000-P0-s4d-scratch-lr0.003-seed0" / "runs" / "lra"
    (folder / "version_0").mkdir(parents=True)
    (folder / "version_0" / "metrics.csv").write_text("step,val/acc\n99,0.9\n")  # stale rows
    seen.clear()
    spt.chain("pathfinder-easy-bn", "s4d", False, **kw)
    assert seen[0][0] == "fit" and "--ckpt_path" not in seen[0]
    assert sorted(p.name for p in folder.iterdir()) == ["version_0"]
    assert not (folder / "version_0" / "metrics.csv").exists()
    # a chain killed after its stages, before it wrote its result, only tests again; --fresh
    # restarts
    (folder.parent.parent / "result.json").unlink()
    seen.clear()
    spt.chain("pathfinder-easy-bn", "s4d", False, **kw)
    assert [c[0] for c in seen] == ["test"]
    seen.clear()
    spt.chain("pathfinder-easy-bn", "s4d", False, **kw, fresh=True)
    assert [c[0] for c in seen] == ["fit", "test"] and "--ckpt_path" not in seen[0]


def test_the_easy_bn_variant_runs_the_leaderboard_setting_through_pretrain_fit_and_test(
        monkeypatch, tmp_path):
    from lra.leaderboard.runner import SETTINGS

    spt = _spt()
    seen = []
    monkeypatch.setattr(spt, "_run", _fake_run(seen))
    spt.chain("pathfinder-easy-bn", "s4d", True, lr=3e-3, seed=1, steps=3000, pretrain=1000,
              data_dir=tmp_path, out=tmp_path / "out")
    pre, fit, test = seen
    assert [pre[0], fit[0], test[0]] == ["pretrain", "fit", "test"]
    assert pre[2].endswith("configs/lra/quick/pathfinder.yaml")  # the LRA task's quick config
    bn = SETTINGS["pathfinder-easy-bn"]["overrides"]
    for cmd, steps in ((pre, "1000"), (fit, "2000")):  # N - P steps of fine-tuning
        o = _opts(cmd)
        assert o["--model.model.d_model"] == str(bn["model"]["model"]["d_model"])
        assert o["--model.model.norm"] == bn["model"]["model"]["norm"] == "batchnorm"
        assert o["--data.init_args.distractors"] == "0"
        assert o["--data.init_args.contour_length"] == "6"
        assert o["--trainer.max_steps"] == steps and o["--seed_everything"] == "1"
    assert _opts(fit)["--model.lr"] == "0.003"
    assert _opts(fit)["--model.init_from"].endswith("pretrain/version_0/checkpoints/last.ckpt")
    # the other tasks keep d_model 32 and their own configs
    seen.clear()
    spt.chain("listops", "s4d", False, lr=1e-3, seed=0, steps=10, pretrain=5,
              data_dir=tmp_path, out=tmp_path / "out")
    assert _opts(seen[0])["--model.model.d_model"] == "32" and "--model.model.norm" not in seen[0]


def test_smoke_data_is_small_and_kept_apart_from_the_real_data(monkeypatch, tmp_path):
    import lra.leaderboard.runner as runner

    spt = _spt()
    calls = []
    monkeypatch.setattr(runner, "ensure_generated", lambda *a: calls.append(a))
    spt.ensure_data(tmp_path, ["pathfinder-easy-bn", "listops"])
    spt.ensure_data(tmp_path / "smoke", ["pathfinder-easy-bn"], smoke=True)
    (t1, d1, a1), (t2, d2, _), (_, d3, a3) = calls
    assert (t1, d1) == ("pathfinder", tmp_path / "pathfinder-easy") and "80000" in a1
    assert (t2, d2) == ("listops", tmp_path)  # the original tasks keep their folders
    assert d3 == tmp_path / "smoke" / "pathfinder-easy"
    assert a3[a3.index("--n-images") + 1] == "300" and "--distractors" in a3
    # main's --smoke moves the data folder aside before generating anything
    class Stop(Exception):
        pass

    def stop(data_dir, tasks, smoke):
        raise Stop(data_dir)

    monkeypatch.setattr(spt, "ensure_data", stop)
    with pytest.raises(Stop) as seen:
        spt.main(["--smoke", "--tasks", "pathfinder-easy-bn", "--data-dir", str(tmp_path),
                  "--store", str(tmp_path / "s.jsonl")])
    assert seen.value.args == (tmp_path / "smoke",)


def test_a_finished_run_is_reused_not_trained_or_tested_again(monkeypatch, tmp_path):
    spt = _spt()
    seen = []
    monkeypatch.setattr(spt, "_run", _fake_run(seen))
    kw = dict(lr=1e-3, seed=1, steps=300, pretrain=100, data_dir=tmp_path, out=tmp_path)
    first = spt.chain("pathfinder-easy-bn", "s4d", False, **kw)
    assert [c[0] for c in seen] == ["fit", "test"]
    seen.clear()
    again = spt.chain("pathfinder-easy-bn", "s4d", False, **kw)
    assert seen == [] and again.secs == first.secs == 2.0
    # --fresh trains it anew
    spt.chain("pathfinder-easy-bn", "s4d", False, fresh=True, **kw)
    assert [c[0] for c in seen] == ["fit", "test"]


def test_one_process_at_a_time_trains_a_run(tmp_path):
    """A second process asking for a run that a live one holds waits until it lets go; a lock
    whose process is gone is taken over at once."""
    import subprocess
    import threading
    import time

    spt = _spt()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "lock").write_text(str(dead.pid))
    with spt._exclusive(tmp_path, poll=0.05):
        assert (tmp_path / "lock").read_text() == str(__import__("os").getpid())
    assert not (tmp_path / "lock").exists()  # let go on the way out

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "lock").write_text(str(holder.pid))
    entered = threading.Event()

    def second():
        with spt._exclusive(tmp_path, poll=0.05):
            entered.set()

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.5)
    assert not entered.is_set()  # the holder is alive: the second waits
    holder.kill()
    holder.wait()
    t.join(10)
    assert entered.is_set()


def test_the_rates_of_one_seed_share_one_pretraining(monkeypatch, tmp_path):
    """The pretraining has no fine-tuning rate in it: a sweep pretrains once per seed, every
    rate fine-tunes from those weights, and each run's time counts the pretraining."""
    spt = _spt()
    seen = []
    monkeypatch.setattr(spt, "_run", _fake_run(seen))
    kw = dict(steps=300, pretrain=100, data_dir=tmp_path, out=tmp_path)
    a = spt.chain("pathfinder-easy-bn", "s4d", True, lr=1e-3, seed=0, **kw)
    assert [c[0] for c in seen] == ["pretrain", "fit", "test"]
    init = _opts(seen[1])["--model.init_from"]
    seen.clear()
    b = spt.chain("pathfinder-easy-bn", "s4d", True, lr=1e-2, seed=0, **kw)
    assert [c[0] for c in seen] == ["fit", "test"] and _opts(seen[0])["--model.init_from"] == init
    assert a.secs == b.secs == 3.0  # 1 s of pretraining (the fake's) + fit + test
    seen.clear()
    spt.chain("pathfinder-easy-bn", "s4d", True, lr=1e-2, seed=1, **kw)  # another seed
    assert [c[0] for c in seen] == ["pretrain", "fit", "test"]
    assert _opts(seen[1])["--model.init_from"] != init
    # --fresh pretrains again, once for all the rates one process runs
    seen.clear()
    spt.chain("pathfinder-easy-bn", "s4d", True, lr=1e-3, seed=0, fresh=True, **kw)
    spt.chain("pathfinder-easy-bn", "s4d", True, lr=1e-2, seed=0, fresh=True, **kw)
    assert [c[0] for c in seen] == ["pretrain", "fit", "test", "fit", "test"]
