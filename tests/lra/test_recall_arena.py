"""The recall arena (`lra leaderboard --suite recall`): a killed sweep resumes without redoing
finished cells, a failing cell is an error record that a rerun retries, and the page says which
cells are missing."""

from __future__ import annotations

import json
import re

import pytest

from lra.leaderboard import arena
from lra.leaderboard.store import load_store

TINY = {"mqar": {"L_kv": [(16, 2)], "d": [8], "lr": [3e-3], "extrapolate_d": 8},
        "extrapolation": {"cells": [("passkey", 16, 0)], "d": 8, "lr": [3e-3]},
        "steps": 2, "n_test": 4}


def test_grid_has_every_cell_and_gdn_state_follows_d():
    from lra.leaderboard import sweep

    m = arena.FULL["mqar"]
    cells = arena.grid(arena.FULL, ["attention", "gdn"])
    assert len(m["cells"]) == 5  # two axes of three cells that share (128, 8, 64)
    for mixer in ("attention", "gdn"):
        state = [c for c in cells if c["kind"] == "state" and c["mixer"] == mixer]
        assert len(state) == 5 * len(sweep.rates_for(mixer))
    # no per-mixer head override: the library's defaults follow d
    assert {json.dumps(c["mixer_kwargs"]) for c in cells} == {"{}"}
    assert len({arena.cell_key(c) for c in cells}) == len(cells), "two cells share a key"
    # MQAR extrapolation rides on one state cell: no second training
    ext = [c for c in cells if c["kind"] == "state" and c["eval_lengths"]]
    assert ext and {(c["L"], c["kv"], c["d"]) for c in ext} == {m["extrapolate"]}
    # each mixer trains its own step count (ARENA_STEPS), at least the cell's floor where it
    # has one (CELL_MIN_STEPS); a --steps override wins
    hard = (256, 16, 64)
    floor = arena.CELL_MIN_STEPS[hard][0]
    for mixer in ("attention", "gdn"):
        base = arena.steps_for(mixer)[0]
        for c in cells:
            if c["mixer"] == mixer and c["kind"] == "state":
                cell = (c["L"], c["kv"], c["d"])
                want = max(base, floor) if cell == hard else base
                assert c["steps"] == want == arena.steps_for(mixer, cell)[0], (mixer, cell)
    assert arena.steps_for("attention", hard)[0] == floor > arena.steps_for("attention")[0]
    assert {c["steps"] for c in arena.grid(arena.FULL, ["gdn"], steps=7)} == {7}


def test_cells_left_out_by_the_grid_are_not_run_and_are_listed_with_the_reason(tmp_path,
                                                                               monkeypatch):
    spec = {**TINY, "mqar": {**TINY["mqar"], "d": [8, 4]},
            "skip": {("attention", 4): "too slow"}}
    cells = arena.grid(spec, ["attention"])
    assert [c["d"] for c in cells] == [8, 8, 4]  # the extrapolated width first, then the rest
    launched = []
    monkeypatch.setattr(arena, "_launch", lambda c, t, **_: launched.append(c) or {
        **c, "status": "ok", "acc": 1.0, "acc_by_length": {str(c["L"]): 1.0}, "wall_s": 1.0,
        "state_size": [1], "date": "2026-01-01"})
    arena.run(cells, tmp_path / "runs.json", jobs=1, progress=False)
    assert sorted(c["d"] for c in launched) == [8, 8]  # the state cell and the passkey-like one
    assert "skip" not in {k for c in launched for k in c}
    page = arena.render(load_store(tmp_path / "runs.json"), cells, store_name="runs.json",
                        plots=("a.png", "b.png"), notes=None)
    assert "attention mqar L=16 kv=2 d=4 lr=0.003: too slow" in page


def test_killed_sweep_resumes_without_redoing_finished_cells(tmp_path, monkeypatch):
    store = tmp_path / "runs.json"
    cells = arena.grid(TINY, ["attention"])
    assert len(cells) == 2
    # the first sweep is "killed" after one cell: only that cell's record is in the store
    arena.run(cells[:1], store, jobs=1, progress=False)
    (first,) = load_store(store)
    assert first["status"] == "ok", first["error"]
    assert first["state_size"] == [2 * 8 * 16] * 2  # attention's KV cache after L=16, 2 layers
    assert "commit" in first and "dirty" in first
    # accuracy per quarter of the sequence, a slice without a query is None
    assert len(first["acc_by_position"]) == 4
    assert all(a is None or 0 <= a <= 1 for a in first["acc_by_position"])
    launched = []
    real = arena._launch
    monkeypatch.setattr(arena, "_launch", lambda c, t, **kw: launched.append(c) or real(c, t, **kw))
    new = arena.run(cells, store, jobs=2, progress=False)
    assert [arena.cell_key(c) for c in launched] == [arena.cell_key(cells[1])]
    assert len(new) == 1 and new[0]["status"] == "ok"
    assert new[0]["task"] == "passkey"
    assert set(new[0]["acc_by_length"]) == {str(n) for n in (16, 32, 64, 128, 256)}
    assert len(load_store(store)) == 2
    # nothing left: a third run launches nothing
    launched.clear()
    assert arena.run(cells, store, jobs=2, progress=False) == [] and launched == []


def test_failed_cell_is_recorded_retried_and_listed_missing(tmp_path):
    store = tmp_path / "runs.json"
    # a cell whose child process fails (an option the mixer does not have)
    cells = [{**c, "mixer_kwargs": {"no_such_option": 1}}
             for c in arena.grid(TINY, ["attention"]) if c["kind"] == "state"]
    (rec,) = arena.run(cells, store, jobs=1, progress=False)
    assert rec["status"] == "error" and "no_such_option" in rec["error"]
    (again,) = arena.run(cells, store, jobs=1, progress=False)  # errors are retried
    assert again["status"] == "error"
    page = arena.render(load_store(store), cells, store_name="runs.json",
                        plots=("a.png", "b.png"), notes=None)
    assert "attention mqar L=16 kv=2 d=8" in page and "no_such_option" in page


def test_unknown_mixer_is_refused_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="unknown mixer 'atention'"):
        arena.main(["--mixers", "atention", "--out", str(tmp_path / "r.md")])


def test_cells_option_runs_only_the_named_cells_and_refuses_unknown_ones(tmp_path, monkeypatch):
    cells = arena.grid(arena.FULL, ["attention"])
    names = {arena.cell_name(c) for c in cells}
    assert names == {"64:4:64", "128:8:64", "256:16:64", "128:8:32", "128:8:128", "passkey"}
    picked = arena.select_cells(cells, ["256:16:64", "passkey"])
    assert picked and {arena.cell_name(c) for c in picked} == {"256:16:64", "passkey"}
    assert arena.select_cells(cells, None) == cells
    ran = []
    monkeypatch.setattr(arena, "run", lambda cs, *a, **k: ran.extend(cs))
    monkeypatch.setattr(arena, "write_outputs", lambda *a, **k: None)
    with pytest.raises(SystemExit, match="no cell 64:4:32 in this grid; its cells are"):
        arena.main(["--mixers", "attention", "--cells", "64:4:32", "--out",
                    str(tmp_path / "r.md")])
    assert not ran
    arena.main(["--mixers", "attention", "--cells", "64:4:64", "--out", str(tmp_path / "r.md")])
    assert ran and {(c["L"], c["kv"], c["d"]) for c in ran} == {(64, 4, 64)}


def test_a_run_of_some_mixers_keeps_the_others_missing_cells_on_the_page(tmp_path):
    """Publishing after a run of one mixer must still list every stored mixer's missing runs
    (the page once listed only the named mixers')."""
    fox_cell = next(c for c in arena.grid(arena.FULL, ["fox"]) if arena.cell_name(c) == "64:4:64")
    rec = {**fox_cell, "status": "ok", "acc": 0.5, "loss_curve": [[1, 1.0]], "state_size": [1],
           "params": 1}
    store = tmp_path / "runs.json"
    store.write_text(json.dumps({"schema": 1, "runs": [rec]}))
    out = tmp_path / "recall.md"
    arena.main(["--mixers", "attention", "--render", "--out", str(out), "--store", str(store)])
    page = out.read_text()
    missing = page[page.index("## Missing cells"):]
    assert "attention mqar L=128 kv=8 d=64" in missing
    assert "fox mqar L=128 kv=8 d=64" in missing  # the stored mixer's grid stays on the page
    assert "mamba mqar" not in missing  # neither named nor stored
    listed = [ln for ln in missing.splitlines() if ln.startswith("- ")]
    assert f"{len(listed)} runs without a result:" in missing  # a short list is counted too


def test_a_run_stopped_by_a_signal_is_named_as_stopped_not_as_a_bare_exit_code(monkeypatch):
    """A child killed by SIGTERM prints nothing and exits -15: its error says it was stopped
    and resumes; a child that failed keeps its exit code and last lines."""
    import subprocess

    (cell,) = [c for c in arena.grid(TINY, ["attention"]) if c["kind"] == "state"]
    class Killed:  # a child that ends by SIGTERM at once, printing nothing
        def __init__(self, *a, **k):
            pass

        def wait(self, timeout=None):
            return -15

    monkeypatch.setattr(subprocess, "Popen", Killed)
    rec = arena._launch(cell, 10)
    assert rec["status"] == "error" and rec["error"].startswith("stopped by SIGTERM")
    assert "resumes" in rec["error"]
    failed = arena.exit_error(1, "Traceback\nValueError: no such option\n")
    assert failed == "exit 1: Traceback | ValueError: no such option"
    ((_, why),) = arena.missing_runs([cell], [rec])  # the missing list quotes the error
    assert why == rec["error"]


def test_a_diverged_run_is_never_a_result_and_is_listed():
    """A run whose loss went NaN scores 0% (argmax of NaN logits): it must not enter the tables
    as a result, and the page must say it diverged."""
    nan = float("nan")
    (cell,) = [c for c in arena.grid(TINY, ["mamba"]) if c["kind"] == "state"]
    rec = {**cell, "status": "ok", "acc": 0.0, "acc_by_length": {"16": 0.0}, "wall_s": 1.0,
           "state_size": [1], "date": "2026-01-01", "final_loss": nan,
           "loss_curve": [[1, 5.4], [3, nan]]}
    assert arena.diverged(rec) == 3
    assert arena.diverged({**rec, "final_loss": 1.0, "loss_curve": [[1, 5.4]]}) is None
    assert arena.best_lr([rec]) == {}
    page = arena.render([rec], [cell], store_name="runs.json", plots=("a.png", "b.png"),
                        notes=None)
    assert "## Runs that diverged" in page and "loss not finite from step 3" in page
    assert "mamba mqar L=16 kv=2 d=8 lr=0.003: diverged" in page


def test_a_cell_whose_loss_still_falls_is_marked_still_learning():
    (cell,) = [c for c in arena.grid(TINY, ["attention"]) if c["kind"] == "state"]
    base = {**cell, "status": "ok", "acc": 0.5, "acc_by_length": {"16": 0.5}, "wall_s": 1.0,
            "state_size": [1], "date": "2026-01-01", "final_loss": 1.0}
    falling = {**base, "loss_curve": [[i, 5.0 - 0.2 * i] for i in range(20)]}
    settled = {**base, "loss_curve": [[i, max(1.0, 5.0 - i)] for i in range(20)]}

    def row(rec):
        page = arena.render([rec, {**rec, "seed": 1}], [cell], store_name="runs.json",
                            plots=("a.png",), notes=None)
        mqar = page[page.index("## MQAR"):]
        return next(ln for ln in mqar.splitlines() if ln.startswith("| attention |"))
    assert "(still learning)" in row(falling)
    assert "(still learning)" not in row(settled) and "50.0 (50.0 / 50.0)" in row(settled)


@pytest.mark.parametrize(("porcelain", "dirty"), [
    ("", False),
    (" M docs/recall_runs.json\n?? docs/x.png\n", False),  # a sweep's own results
    (" M docs/recall_runs.json\n M lrm/model.py\n", True),  # code: the commit is not the code
])
def test_dirty_means_code_changes_not_the_results_a_sweep_writes(monkeypatch, porcelain, dirty):
    import subprocess

    from lra.leaderboard import store

    monkeypatch.setattr(store.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=porcelain, stderr=""))
    assert store.git_dirty() is dirty


def test_runs_at_an_earlier_step_count_are_kept_but_not_counted(tmp_path):
    """A cell whose step count was raised (ARENA_STEPS, CELL_MIN_STEPS) shows only the runs at
    its current count: the older runs stay in the store and are counted as earlier records,
    in the table, the missing list and the plots alike."""
    (cell,) = [c for c in arena.grid(TINY, ["attention"]) if c["kind"] == "state"]
    base = {**cell, "status": "ok", "acc_by_length": {"16": 0.5}, "wall_s": 1.0,
            "state_size": [1], "date": "2026-01-01", "final_loss": 1.0,
            "loss_curve": [[i, max(1.0, 5.0 - i)] for i in range(20)]}
    old = {**base, "steps": 1, "acc": 0.111}  # the cell's earlier count (TINY trains 2)
    new = {**base, "acc": 0.777}
    other = {**base, "mixer": "fox", "acc": 0.333}  # a mixer outside these cells: kept
    assert arena.in_grid([old, new, other], [cell]) == [new, other]

    def table(recs):
        page = arena.render(recs, [cell], store_name="runs.json", plots=("a.png",), notes=None)
        rows = [ln for ln in page[page.index("## MQAR"):].splitlines()
                if ln.startswith("| attention |")]
        return page, " ".join(rows)
    page, row = table([new, old])
    assert "77.7" in row and "11.1" not in row
    assert "keeps 1 records of earlier grids" in page
    page, row = table([old])  # only the old count: the cell is missing, not 11.1%
    assert "11.1" not in page and "attention mqar L=16 kv=2 d=8 lr=0.003: not run yet" in page
    store = tmp_path / "runs.json"
    store.write_text(json.dumps({"schema": 1, "runs": [old, new]}))
    arena.write_outputs(store, tmp_path / "recall.md", [cell])
    assert "77.7" in (tmp_path / "recall.md").read_text()


def test_the_legend_names_every_panels_mixers():
    """The last panel (a cell run for two mixers so far) must not decide the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    axes[0].plot([1, 2], [1, 2], label="gdn")
    axes[0].plot([1, 2], [2, 1], label="attention")
    axes[1].plot([1, 2], [1, 2], label="attention")
    handles, labels = arena._legend_entries(list(axes))
    plt.close(fig)
    assert labels == ["attention", "gdn"] and len(handles) == 2


def test_a_long_missing_list_is_counted_by_mixer_and_names_its_cells():
    """Past 40 missing runs the page counts them per mixer; the count must still say which
    cells the runs belong to, or the page cannot tell a reader what is left to run."""
    cells = arena.grid(arena.FULL, ["attention", "mamba", "gdn"])
    page = arena.render([], cells, store_name="runs.json", plots=("a.png", "b.png"), notes=None)
    missing = page[page.index("## Missing cells"):]
    n = len(arena.missing_runs(cells, []))
    assert n > 40 and f"{n} runs have no result" in missing
    line = next(ln for ln in missing.splitlines() if ln.startswith("- mamba: "))
    added = len(arena.CELL_RATES.get(("mamba", (256, 16, 64)), ((), ""))[0])
    assert " 128:8:64 (3)" in line and f" 256:16:64 ({3 + added})" in line
    assert " passkey (3)" in line
    counted = sum(int(x) for ln in missing.splitlines() if ln.startswith("- ")
                  for x in re.findall(r"\((\d+)\)", ln))
    assert counted == n


def test_the_state_plot_shows_the_tables_numbers(tmp_path):
    # two seeds at the best rate: the plotted point is their mean, as in the MQAR table
    (cell,) = [c for c in arena.grid(TINY, ["attention"]) if c["kind"] == "state"]
    base = {**cell, "status": "ok", "acc_by_length": {"16": 0.5}, "wall_s": 1.0,
            "state_size": [100, 28], "date": "2026-01-01", "final_loss": 1.0,
            "loss_curve": [[1, 1.0]]}
    recs = [{**base, "acc": 0.8}, {**base, "acc": 0.6, "seed": 1}]
    assert arena.state_points(recs) == {(16, 2): {"attention": [(128, pytest.approx(70.0))]}}
    page = arena.render(recs, [cell], store_name="runs.json", plots=("a.png",), notes=None)
    assert "70.0 (80.0 / 60.0)" in page
    arena.plot_state(recs, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_each_run_records_the_commit_it_was_launched_at(tmp_path, monkeypatch):
    """A sweep runs for hours and its runs import the code anew: a commit made in between is
    what the later runs train with, and their records say so."""
    commits = iter(f"c{i}" for i in range(10))
    monkeypatch.setattr(arena, "git_commit", lambda: next(commits))
    monkeypatch.setattr(arena, "_launch", lambda c, t, **_: {
        **c, "status": "ok", "error": None, "acc": 0.5, "wall_s": 1, "loss_curve": []})
    cells = [c for c in arena.grid(TINY, ["attention"])][:2]
    recs = arena.run(cells, tmp_path / "runs.json", jobs=1, progress=False)
    assert len({r["commit"] for r in recs}) == 2  # one per launch, not the sweep's start


def test_missing_runs_carry_the_cpu_time_their_cell_took():
    """A missing run is priced at the median CPU seconds per step of its cell's finished runs
    (GPU runs and other cells do not count), and the page totals what is left."""
    cells = [c for c in arena.grid(TINY, ["mamba"]) if c["kind"] == "state"]
    first = cells[0]
    done = [{**first, "lr": lr, "status": "ok", "acc": 0.5, "acc_by_length": {"16": 0.5},
             "wall_s": 1.0, "state_size": [1], "date": "2026-01-01", "final_loss": 1.0,
             "loss_curve": [[1, 1.0]], "fit_s": fit, "steps": steps, "device_type": dev}
            for lr, fit, steps, dev in ((0.01, 60.0, 100, "cpu"), (0.03, 120.0, 100, "cpu"),
                                        (0.1, 300.0, 200, "cpu"), (0.3, 1000.0, 100, "cuda"))]
    todo = {**first, "lr": 1e-3, "steps": 400}
    # per step on the CPU: 0.6, 1.2, 1.5 -> median 1.2 s, times 400 steps
    assert arena.cpu_seconds(todo, done) == pytest.approx(480.0)
    assert arena.cpu_seconds({**todo, "d": 999}, done) is None  # another cell
    page = arena.render(done, [todo], store_name="runs.json", plots=("a.png", "b.png"),
                        notes=None)
    missing = page[page.index("## Missing cells"):]
    assert "(about 8 min)" in missing and "about 0.1 CPU-hours for the 1 run." in missing


def test_a_rate_added_to_one_cell_is_swept_can_win_and_gets_the_second_seed(tmp_path,
                                                                            monkeypatch):
    """CELL_RATES: a rate between the ladder's rungs, added to one mixer's sweep in one cell, is
    run on the first seed beside the family's rates, can be the cell's best, is then re-run on
    the second seed, and is marked on the page; no other cell or mixer gets it."""
    from lra.leaderboard import sweep

    monkeypatch.setattr(arena, "CELL_RATES", {("gdn", (64, 4, 64)): ((5.5e-3,), "a window")})
    cells = arena.select_cells(arena.grid(arena.FULL, ["gdn", "attention"]),
                               ["64:4:64", "128:8:64"])

    def rates(mixer, name):
        return sorted(c["lr"] for c in cells if c["mixer"] == mixer
                      and arena.cell_name(c) == name)
    assert rates("gdn", "64:4:64") == [1e-3, 3e-3, 5.5e-3, 1e-2]
    assert rates("gdn", "128:8:64") == sweep.rates_for("gdn")
    assert rates("attention", "64:4:64") == sweep.rates_for("attention")

    launched = []

    def fake(c, t, **_):
        launched.append((c["lr"], c["seed"]))
        return {**c, "status": "ok", "acc": 0.9 if c["lr"] == 5.5e-3 else 0.1,
                "acc_by_length": {str(c["L"]): 0.5}, "wall_s": 1.0, "state_size": [1],
                "date": "2026-01-01", "final_loss": 1.0, "loss_curve": [[1, 1.0], [2, 1.0]]}
    monkeypatch.setattr(arena, "_launch", fake)
    mine = [c for c in cells if c["mixer"] == "gdn" and arena.cell_name(c) == "64:4:64"]
    arena.run(mine, tmp_path / "runs.json", jobs=1, progress=False, protocol=sweep.PROTOCOL)
    # the best rate is in the middle of the four, so no extension: its second seed only
    assert sorted(launched) == [(1e-3, 0), (3e-3, 0), (5.5e-3, 0), (5.5e-3, 1), (1e-2, 0)]
    page = arena.render(load_store(tmp_path / "runs.json"), mine, store_name="runs.json",
                        plots=("a.png",), notes=None)
    row = next(ln for ln in page.splitlines() if ln.startswith("| gdn |"))
    assert "90.0 (90.0 / 90.0) @ 0.0055" in row
    assert "0.0055 ok (added)" in page and "0.003 ok," in page
    assert "gdn also sweeps 0.0055, between the rungs of its ladder (a window;" in page
