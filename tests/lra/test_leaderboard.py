"""`lra leaderboard`: the run store, the page, and a tiny grid end to end (on fixtures)."""

from __future__ import annotations

import json
import sys

import pytest

from lra import leaderboard as lb
from lra.data.fixtures import write_listops


def _rec(mixer, task, setting="quick", date="2026-01-01T00:00:00", test=0.5, **kw):
    base = {"mixer": mixer, "task": task, "setting": setting, "date": date, "status": "ok",
            "error": None, "test": test, "best_val": test, "majority": 0.2, "steps": 100,
            "max_steps": 100, "max_time": "00:00:01:30", "model": {"d_model": 64, "n_layers": 2,
                                                                 "bidirectional": True},
            "batch_size": 32, "lr": 0.003, "device": "CPU: test", "wall_s": 60.0,
            "data": "generated"}
    base.update(kw)
    return base


def test_a_damaged_store_is_refused_with_what_to_do(tmp_path):
    store = tmp_path / "runs.json"
    lb.add_runs(store, [_rec("attention", "listops")])
    store.write_text(store.read_text()[:-20])  # cut short, as a killed copy would leave it
    with pytest.raises(ValueError, match=r"runs\.json is not valid JSON .*move it aside"):
        lb.load_store(store)


def test_store_merges_without_losing_rows(tmp_path):
    store = tmp_path / "runs.json"
    old = _rec("attention", "listops", test=0.30, date="2026-01-01T00:00:00")
    other = _rec("s4d", "pathfinder", test=0.55)
    lb.add_runs(store, [old, other])
    newer = _rec("attention", "listops", test=0.40, date="2026-01-02T00:00:00")
    full = _rec("attention", "listops", setting="full", test=0.36)
    runs = lb.add_runs(store, [newer, full, other])  # `other` again: not duplicated
    assert lb.load_store(store) == runs
    assert len(runs) == 4
    assert old in runs and newer in runs and other in runs and full in runs
    newest = lb.latest(runs)
    assert newest[("attention", "listops", "quick", False)]["test"] == 0.40  # newest wins
    assert newest[("attention", "listops", "full", False)]["test"] == 0.36  # own setting
    assert len(newest) == 3
    # the file is a versioned JSON object, readable without lrm
    assert json.loads(store.read_text())["schema"] == lb.STORE_SCHEMA


def test_markdown_has_published_rows_and_ours(tmp_path):
    runs = [_rec("attention", "listops", test=0.412),
            _rec("s4d", "listops", test=0.300, date="2026-01-01T00:00:00"),
            _rec("s4d", "listops", test=0.333, date="2026-01-03T00:00:00"),
            _rec("mamba", "listops", status="error", test=None, best_val=None,
                 error="ImportError: no module named x")]
    text = lb.render_markdown(runs, notes="hand-written note")
    for row in lb.PUBLISHED:  # every published model with its numbers and source
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {row['model']} |"))
        assert row["source"] in line
        assert all(f"{v:.2f}" in line for v in row["acc"].values() if v is not None)
    assert "| Transformer | 36.37 |" in text and "FAIL" in text
    ours = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "41.2" in ours["attention"]
    assert "33.3" in ours["s4d"] and "30.0" not in ours["s4d"]  # the newest run is shown
    assert "error: ImportError" in ours["mamba"]
    assert "20.0" in ours["*majority class (test set)*"]
    assert "short CPU run" in text and "100 training steps" in text and "d=64" in text
    assert "CPU: test" in text
    # hand-written notes survive regeneration
    out = tmp_path / "lb.md"
    store = tmp_path / "lb_runs.json"
    lb.save_store(store, runs)
    lb.write_outputs(store, out, None)
    out.write_text(out.read_text().replace(f"{lb.NOTES_BEGIN}\n", f"{lb.NOTES_BEGIN}\nkeep me"))
    lb.write_outputs(store, out, None)
    assert "keep me" in out.read_text()


def test_self_pretrained_runs_sit_beside_scratch_runs():
    cfg = {"model": {"model": {"d_model": 64}, "init_from": "runs/pretrain/x.ckpt"}}
    rec = lb.runner._record_base("s4d", "listops", "quick", cfg, {})
    assert rec["pretrained"] is True and rec["init_from"] == "runs/pretrain/x.ckpt"
    bare = lb.runner._record_base("s4d", "listops", "quick", {"model": {}}, {})
    assert bare["pretrained"] is False
    runs = [_rec("s4d", "listops", test=0.300),
            _rec("s4d", "listops", test=0.450, pretrained=True, init_from="x.ckpt")]
    assert len(lb.latest(runs)) == 2  # neither replaces the other
    text = lb.render_markdown(runs)
    ours = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "30.0" in ours["s4d"] and "45.0" in ours["s4d + SPT"]


def test_failed_worker_becomes_an_error_row(tmp_path, monkeypatch):
    write_listops(tmp_path / "data", n=(8, 4, 4))
    monkeypatch.setattr(lb.runner, "WORKER", [sys.executable, "-c",
                                       "import sys; print('RuntimeError: boom'); sys.exit(3)"])
    rec = lb.run_one("attention", "listops", setting="t", quick=True,
                     data_dir=tmp_path / "data", max_steps=2, budget_minutes=None,
                     runs_dir=tmp_path / "runs", overrides={"model": {"model": {"d_model": 16}}},
                     timeout=60, config_dir=lb.REPO / "configs")
    assert rec["status"] == "error"
    assert "worker exited 3" in rec["error"] and "boom" in rec["error"]
    assert rec["test"] is None and rec["params"] > 0


@pytest.mark.slow
def test_tiny_grid_end_to_end(tmp_path, monkeypatch):
    """One real mixer and one that cannot import, on the ListOps fixture, 2 steps."""
    data = tmp_path / "data"
    write_listops(data)
    import lrm.registry

    monkeypatch.setitem(lrm.registry.MIXERS, "broken", "lrm.mixers.no_such_module:Broken")
    out = tmp_path / "docs" / "lb.md"
    lb.main(["--quick", "--mixers", "attention", "broken", "--tasks", "listops",
             "--max-steps", "2", "--data-dir", str(data), "--out", str(out),
             "--runs-dir", str(tmp_path / "runs"), "--set", "model.model.d_model=16",
             "--set", "data.init_args.batch_size=8"])
    runs = {r["mixer"]: r for r in lb.load_store(tmp_path / "docs" / "lb_runs.json")}
    ok, bad = runs["attention"], runs["broken"]
    assert ok["status"] == "ok", ok["error"]
    # a fraction of the 8 test examples (not a percentage, not a loss)
    assert ok["test"] in {i / 8 for i in range(9)}
    assert ok["best_val"] == max(acc for _, acc in ok["val_curve"])  # the best of the curve
    assert ok["steps"] == 2 and ok["n_test"] == 8 and ok["params"] > 0
    assert (tmp_path / "runs" / "quick").is_dir()
    assert bad["status"] == "error" and "ModuleNotFoundError" in bad["error"]
    text = out.read_text()
    assert "| broken | error: ModuleNotFoundError" in text
    assert "| attention |" in text and "| Mega |" in text
    assert (tmp_path / "docs" / "lb.png").stat().st_size > 1000


def test_recipe_layers_over_the_task_config(tmp_path):
    from pathlib import Path

    configs = Path(lb.REPO) / "configs"
    cfg = lb.run_config("pathfinder", "s4", quick=False, data_dir="/d", max_steps=1000,
                        budget_minutes=None, run_dir=tmp_path, overrides={}, config_dir=configs,
                        recipe="s4")
    m = cfg["model"]["model"]
    assert m["mixer"] == "s4" and m["encoder"] == "linear" and m["mixer_kwargs"]["d_state"] == 64
    assert cfg["model"]["lr"] == 0.004 and cfg["model"]["warmup_steps"] == 100  # <= 10 %
    # the recipe's `data: {batch_size: 64}` lands in init_args, where LightningCLI reads it
    assert set(cfg["data"]) == {"class_path", "init_args"}
    assert cfg["data"]["init_args"]["batch_size"] == 64
    assert cfg["data"]["init_args"]["data_dir"] == "/d"
    assert lb._recipe_mixer("s4", configs) == "s4"
    with pytest.raises(FileNotFoundError, match=r"recipes: .*'s4'"):
        lb.recipe_config("s5", "listops", configs)


def test_parallel_grids_get_their_own_run_folders(tmp_path):
    a = lb._reserve_dir(tmp_path / "quick", "s4d-pathfinder-20261126-063952")
    b = lb._reserve_dir(tmp_path / "quick", "s4d-pathfinder-20261126-063952")
    assert a != b and a.is_dir() and b.name.endswith("-2")


def test_causal_only_mixers_get_a_causal_encoder(tmp_path):
    """LRA's quick configs are bidirectional; landmark attention cannot be (its class says
    causal_only), so its grid cells train a causal model instead of failing."""
    kw = dict(quick=True, data_dir="x", max_steps=5, budget_minutes=None, run_dir=tmp_path,
              overrides={}, config_dir=lb.REPO / "configs")
    assert lb.run_config("listops", "gdn", **kw)["model"]["model"]["bidirectional"] is True
    assert lb.run_config("listops", "landmark", **kw)["model"]["model"]["bidirectional"] is False


def test_loss_curve_is_window_means_of_the_finite_losses():
    rows = [{"step": str(s), "train/loss": str(1.0 if s < 50 else 0.0)} for s in range(100)]
    rows.insert(10, {"step": "10", "train/loss": "nan"})  # a non-finite step is left out
    rows.append({"step": "99", "val/acc": "0.5"})  # rows without a loss are no points
    assert lb.runner.loss_curve(rows, points=4) == [[25, 1.0], [50, 1.0], [75, 0.0],
                                                    [100, 0.0]]
    assert lb.runner.loss_curve([{"step": "3", "val/acc": "0.5"}]) == []
    # the uniform-guess line's class count comes from the task's DataModule
    assert lb.runner.task_classes("listops") == 10 and lb.runner.task_classes("pathfinder") == 2
    assert lb.runner.task_classes("no-such-task") is None


def test_curves_show_the_tables_rate_and_older_runs_get_theirs_from_their_folders(
        tmp_path, monkeypatch):
    monkeypatch.setattr(lb.runner, "REPO", tmp_path)
    run = tmp_path / "runs" / "a-best"
    (run / "fit").mkdir(parents=True)
    (run / "fit" / "metrics.csv").write_text(
        "epoch,step,train/loss\n" + "".join(f"0,{s},0.7\n" for s in range(40)))
    curve = [[10, 0.69], [20, 0.68]]
    runs = [_rec("a", "pathfinder", setting="s", lr=1e-3, seed=0, best_val=0.5,
                 loss_curve=curve),
            # the best rate: drawn, its curve read from its folder (an older record)
            _rec("a", "pathfinder", setting="s", lr=3e-3, seed=0, best_val=0.6,
                 run_dir="runs/a-best"),
            _rec("a", "pathfinder", setting="s", lr=3e-3, seed=1, best_val=0.7,
                 loss_curve=curve),
            _rec("b", "pathfinder", setting="s", lr=1e-3, seed=0, run_dir="runs/gone")]
    store, out = tmp_path / "lb_runs.json", tmp_path / "lb.md"
    lb.save_store(store, runs)
    lb.write_outputs(store, out, tmp_path / "lb.png")
    saved = {(r["mixer"], r["lr"], r["seed"]): r for r in lb.load_store(store)}
    # 40 steps: one per window
    assert saved[("a", 3e-3, 0)]["loss_curve"] == [[i + 1, 0.7] for i in range(40)]
    assert "loss_curve" not in saved[("b", 1e-3, 0)]  # no folder here: nothing made up
    from lra.leaderboard.render import curve_runs

    drawn = curve_runs(list(saved.values()))
    assert [(r["mixer"], r["lr"], r["seed"]) for r in drawn[("s", "pathfinder")]] == \
        [("a", 3e-3, 0)]
    assert "![learning curves](lb_curves.png)" in out.read_text()
    assert (tmp_path / "lb_curves.png").stat().st_size > 1000


def test_the_plot_shows_the_tables_numbers_not_the_newest_run(tmp_path):
    # the newest run of a cell is its second seed (or an extension): the bar must be the
    # table's number, the mean over the seeds at the best rate
    runs = [_rec("a", "listops", setting="s", lr=1e-3, seed=0, best_val=0.5, test=0.45,
                 date="2026-01-01T00:00:00"),
            _rec("a", "listops", setting="s", lr=3e-3, seed=0, best_val=0.6, test=0.60,
                 date="2026-01-02T00:00:00"),
            _rec("a", "listops", setting="s", lr=3e-3, seed=1, best_val=0.55, test=0.50,
                 date="2026-01-03T00:00:00"),
            _rec("a", "listops", setting="s", lr=1e-2, seed=0, best_val=0.3, test=0.30,
                 date="2026-01-04T00:00:00"),
            _rec("b", "listops", setting="t", test=0.25, majority=0.15)]
    from lra.leaderboard.render import ours_table, plot, plot_rows

    rows = plot_rows(runs)["listops"]
    assert [b["label"] for b in rows] == ["a [s]", "b [t]"]
    a = rows[0]
    assert a["acc"] == pytest.approx(55.0) and a["seeds"] == pytest.approx([60.0, 50.0])
    assert a["lr"] == 3e-3 and a["majority"] == pytest.approx(20.0)
    assert "55.0 (60.0 / 50.0) @ 0.003" in ours_table([r for r in runs if r["setting"] == "s"])
    assert rows[1]["acc"] == pytest.approx(25.0) and rows[1]["majority"] == pytest.approx(15.0)
    plot(runs, tmp_path / "lb.png")
    assert (tmp_path / "lb.png").stat().st_size > 1000


def test_a_resumed_runs_wall_time_is_marked_as_its_last_sittings():
    """A run resumed from its checkpoint stores every sitting's fit time but only the last
    sitting's wall time and date; the page must not show the smaller wall as the run's."""
    resumed = _rec("s4", "listops", wall_s=243.0, fit_s=2284.6, test_s=22.1,
                   resumed_from_step=1800)
    straight = _rec("s4", "listops", lr=0.01, wall_s=2108.0, fit_s=2083.7, test_s=21.9)
    table = lb.render.details_table([resumed, straight])
    row = next(x for x in table.splitlines() if "| 0.003 |" in x)
    assert "243 (2284.6 / 22.1); wall and date: the sitting resumed at step 1800" in row
    other = next(x for x in table.splitlines() if "| 0.01 |" in x)
    assert "2108 (2083.7 / 21.9) |" in other and "resumed" not in other
