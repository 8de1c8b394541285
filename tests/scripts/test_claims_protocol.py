"""The claim-check protocol (scripts/claims/common.py) with stub training functions: the
learning-rate sweep extends at an end and re-runs the best rate on a second seed, a failed
positive control gives "redesign needed" instead of a verdict, and each claim is judged on
every seed."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "claims"))

from common import (
    AT_CEILING,
    HOLDS,
    IN_PART,
    NOT_HOLD,
    REDESIGN,
    Check,
    Claim,
    Cmp,
    Control,
    Run,
    RunStore,
    curve_of,
    dump,
    render,
    run_check,
    run_store,
    still_improving,
)


def peaked(best_lr: float, top: float):
    """A stub whose accuracy peaks at ``best_lr`` (in log-rate) at ``top``."""
    def score(lr: float) -> float:
        return top - 0.1 * (math.log10(lr) - math.log10(best_lr)) ** 2
    return score


def stub(models: dict, calls: list | None = None):
    """train(model, lr, seed) from {model: (score of lr, seed offsets)}."""
    def train(model: str, lr: float, seed: int) -> Run:
        if calls is not None:
            calls.append((model, lr, seed))
        score, offsets = models[model]
        losses = [2.0 * 0.9 ** i for i in range(50)]
        return Run({"acc": score(lr) + offsets.get(seed, 0.0)}, curve_of(losses, 10))
    return train


def check(models, claims, *, level=0.9, lrs=(1e-3, 3e-3, 1e-2), calls=None, **kw):
    return Check("stub", list(models), lrs, stub(models, calls), Control("ctrl", level),
                 claims, log=lambda msg: None, **kw)


def test_sweep_extends_at_an_end_and_reruns_the_best_on_the_second_seed():
    calls = []
    models = {"ctrl": (peaked(3e-3, 0.99), {}), "m": (peaked(3e-4, 0.8), {})}
    res = run_check(check(models, [], calls=calls))
    m = res.models["m"]
    assert len(m.sweep) == 5  # extended twice downwards by the grid's ratio 3: 1e-3/3, 1e-3/9
    assert min(m.sweep) == pytest.approx(1e-3 / 9)
    assert m.best_lr == pytest.approx(1e-3 / 3)  # the rate nearest 3e-4, now inside the grid
    assert not m.at_end
    assert [c[2] for c in calls if c[0] == "m"][-1] == 1  # the best rate on seed 1
    assert [r.seed for r in m.runs] == [0, 1]
    assert res.models["ctrl"].best_lr == pytest.approx(3e-3) and len(res.models["ctrl"].sweep) == 3


def test_best_still_at_an_end_after_extending_is_flagged():
    models = {"ctrl": (peaked(3e-3, 0.99), {}), "m": (peaked(1.0, 0.8), {})}
    res = run_check(check(models, [], max_extend=1))
    assert res.models["m"].at_end and len(res.models["m"].sweep) == 4
    assert "(at an end of the sweep)" in render(res)


def test_failed_control_gives_redesign_needed_not_a_verdict():
    models = {"ctrl": (peaked(3e-3, 0.5), {}), "m": (peaked(3e-3, 0.8), {})}
    claim = Claim("m beats chance", [Cmp(("m", "acc"), 0.1)])
    res = run_check(check(models, [claim]))
    assert not res.control_ok
    assert res.verdicts[0][1] == REDESIGN
    assert "FAILED, redesign needed" in render(res)


def test_a_control_must_pass_on_both_seeds():
    models = {"ctrl": (peaked(3e-3, 0.95), {1: -0.2}), "m": (peaked(3e-3, 0.8), {})}
    res = run_check(check(models, [Claim("x", [Cmp(("m", "acc"), 0.1)])]))
    assert not res.control_ok and res.verdicts[0][1] == REDESIGN


@pytest.mark.parametrize(("offsets", "verdict"), [
    ({}, HOLDS),              # a beats b by 0.1 on both seeds
    ({1: -0.15}, IN_PART),    # seed 1 of a falls below b: the seeds disagree
    ({0: -0.15, 1: -0.2}, NOT_HOLD),
])
def test_claims_are_judged_on_every_seed(offsets, verdict):
    models = {"ctrl": (peaked(3e-3, 0.99), {}), "a": (peaked(3e-3, 0.9), offsets),
              "b": (peaked(3e-3, 0.8), {})}
    claim = Claim("a recalls more than b", [Cmp(("a", "acc"), ("b", "acc"), margin=0.05)])
    res = run_check(check(models, [claim]))
    assert res.verdicts[0][1] == verdict


@pytest.mark.parametrize(("a_top", "b_top", "margin", "ceiling", "verdict"), [
    (1.0, 0.99, 0.05, 1.0, AT_CEILING),   # b within the margin of 1.0: no room to hold
    (1.0, 0.99, 0.05, None, NOT_HOLD),    # an unbounded metric has no ceiling
    (1.0, 0.99, -0.05, 1.0, HOLDS),       # "no worse than": a ceiling never blocks it
    (0.9, 0.8, 0.05, 1.0, HOLDS),         # room enough, and it holds
    (0.8, 0.8, 0.05, 1.0, NOT_HOLD),      # room enough, and it fails: a real "does not hold"
    (0.8, 0.99, 0.05, 1.0, NOT_HOLD),     # a trails a b at the ceiling: it does not hold
])
def test_a_comparison_with_no_room_under_the_ceiling_asks_for_a_redesign(
        a_top, b_top, margin, ceiling, verdict):
    models = {"ctrl": (peaked(3e-3, 0.99), {}), "a": (peaked(3e-3, a_top), {}),
              "b": (peaked(3e-3, b_top), {})}
    claim = Claim("a recalls more than b", [Cmp(("a", "acc"), ("b", "acc"), margin, ceiling)])
    res = run_check(check(models, [claim]))
    assert res.verdicts[0][1] == verdict
    if verdict == AT_CEILING:
        assert f"**{AT_CEILING}**" in render(res)
        assert AT_CEILING in res.verdicts[0][2][0]  # the comparison's line says why


def test_a_claim_of_several_parts_holds_in_part_when_only_some_hold():
    models = {"ctrl": (peaked(3e-3, 0.99), {}), "a": (peaked(3e-3, 0.9), {}),
              "b": (peaked(3e-3, 0.8), {})}
    claim = Claim("a is above b and above 0.95", [Cmp(("a", "acc"), ("b", "acc")),
                                                  Cmp(("a", "acc"), 0.95)])
    assert run_check(check(models, [claim])).verdicts[0][1] == IN_PART


def test_too_few_learning_rates_is_refused():
    models = {"ctrl": (peaked(3e-3, 0.99), {})}
    with pytest.raises(ValueError, match="at least 3"):
        run_check(check(models, [], lrs=(1e-3, 3e-3)))


def test_still_improving_reads_the_last_fifth_of_a_curve():
    assert still_improving(curve_of([1.0 - 0.01 * i for i in range(100)]))
    assert not still_improving(curve_of([1.0] * 100))
    assert not still_improving([])


def test_report_shows_both_seeds_curves_and_wall_time(tmp_path):
    models = {"ctrl": (peaked(3e-3, 0.99), {1: -0.01})}
    res = run_check(check(models, []))
    text = render(res)
    assert "0.990 / 0.980" in text and "Wall time of the check" in text
    assert "seed 0: " in text and "seed 1: " in text and "(still improving)" not in text
    dump(res, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["control_ok"] and len(data["models"]["ctrl"]["runs"]) == 2


def test_run_store_resumes_a_killed_check_and_keys_runs_by_their_settings(tmp_path):
    """A check stopped part-way resumes from its store: finished runs are read back (curves
    included), a line cut short by the kill is skipped, only the missing runs train; a run made
    under other settings is not reused."""
    models = {"ctrl": (peaked(3e-3, 0.99), {1: -0.01}), "m": (peaked(3e-3, 0.7), {1: 0.02})}
    path = tmp_path / "runs.jsonl"
    first: list = []
    full = run_check(check(models, [], calls=first, store=RunStore(path, {"steps": 10})))
    lines = path.read_text().splitlines()
    assert len(lines) == len(first) == 8  # 3 rates + the second seed, for two models
    # the kill: the last three runs never finished, the one before was cut mid-line
    path.write_text("\n".join([*lines[:4], lines[4][:30]]) + "\n")
    resumed: list = []
    res = run_check(check(models, [], calls=resumed, store=RunStore(path, {"steps": 10})))
    assert resumed == first[4:]  # the runs before the cut line are not trained again
    for name in models:
        a, b = full.models[name], res.models[name]
        assert b.best_lr == a.best_lr and b.values("acc") == a.values("acc")
        assert [r.curve for r in b.runs] == [r.curve for r in a.runs]
    # the report says which runs came back from the store and what they took when trained
    assert "(4 of its 8 runs read back from the run store; the runs' own training" in render(res)
    assert "read back" not in render(full)
    assert all("from_store" not in line for line in path.read_text().splitlines())
    other: list = []
    run_check(check(models, [], calls=other, store=RunStore(path, {"steps": 20})))
    assert other == first  # other settings: every run trains
    fresh: list = []
    run_check(check(models, [], calls=fresh, store=RunStore(path, {"steps": 10}, fresh=True)))
    assert fresh == first


def test_run_store_keys_ignore_which_models_run_and_unset_new_options(tmp_path):
    """Running a check's models in pieces (--models, --part) reuses the runs of the whole
    check, and so do stores written before that rule or before an option (default None)
    existed; a setting that changes a run still separates the keys."""
    path = tmp_path / "runs.jsonl"
    run = Run({"acc": 0.5}, [(1, 2.0)], 3.0, 1e-3, 0)
    old = {"check": "c", "model": "m", "lr": 1e-3, "seed": 0,
           "settings": {"models": ["m", "n"], "steps": 10}}  # as stores were once written
    path.write_text(json.dumps({"key": json.dumps(old), "run": asdict(run)}) + "\n")
    for settings in ({"models": ["m"], "steps": 10}, {"steps": 10, "kv": None},
                     {"steps": 10, "part": ["memory"]}):
        store = RunStore(path, settings)
        assert store.get(store.key("c", "m", 1e-3, 0)).scores == {"acc": 0.5}
    store = RunStore(path, {"steps": 10, "kv": 16})
    assert store.get(store.key("c", "m", 1e-3, 0)) is None


def test_run_store_keys_name_paths_inside_the_repository_relative_to_it(tmp_path):
    """A data folder inside the checkout enters a run's key as a relative path, so a store
    committed from one clone is read back in another (and names no machine's folders); a
    store line written with this checkout's absolute path is read back too."""
    from common import REPO, RunStore

    path = tmp_path / "s.jsonl"
    store = RunStore(path, {"data_dir": REPO / "data" / "spt", "other": tmp_path})
    key = store.key("c", "m", 1e-3, 0)
    assert json.loads(key)["settings"] == {"data_dir": "data/spt", "other": str(tmp_path)}
    old = json.dumps({"check": "c", "model": "m", "lr": 1e-3, "seed": 0, "settings": {
        "data_dir": str(REPO / "data" / "spt"), "other": str(tmp_path)}}, sort_keys=True)
    path.write_text(json.dumps({"key": old, "run": {"scores": {"acc": 0.5}}}) + "\n")
    assert RunStore(path, {"data_dir": REPO / "data" / "spt", "other": tmp_path}).get(key)


def test_a_claim_comparing_a_model_the_check_does_not_train_is_left_out():
    """run_check judges a claim only when every model it compares was trained (a check run
    with some of its models, e.g. --models); a comparison against a fixed level names no model."""
    models = {"ctrl": (peaked(3e-3, 0.99), {}), "m": (peaked(3e-3, 0.95), {})}
    claims = [Claim("m beats a model not trained", [Cmp(("m", "acc"), ("absent", "acc"), 0.0)]),
              Claim("m beats a level", [Cmp(("m", "acc"), 0.5, 0.1)]),
              Claim("no comparison", [])]
    res = run_check(check(models, claims))
    assert [text for text, _, _ in res.verdicts] == ["m beats a level"]
    assert claims[0].models() == {"m", "absent"} and claims[1].models() == {"m"}


def test_a_check_killed_mid_run_continues_that_run_from_its_checkpoint(tmp_path, monkeypatch):
    """A real training run of two fits (common.train), killed in its second fit: the next
    invocation trains the first fit again (its checkpoint went when it finished), resumes the
    second from its checkpoint, and the check's results equal an uninterrupted check's."""
    import common
    import torch

    from lrm import LRModel, ModelConfig

    monkeypatch.setenv("LRA_CLAIM_CHECKPOINTS", str(tmp_path / "checkpoints"))
    x = torch.randint(0, 8, (48, 12), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, dims=1)
    resumed_at: list[int] = []
    kill = {"at_fit": None}

    def train(model: str, lr: float, seed: int) -> Run:
        torch.manual_seed(seed)
        net = LRModel(ModelConfig(mixer="attention", d_model=16, n_layers=1, vocab_size=8,
                                  head="lm", dropout=0.1))
        losses = []
        for n in range(2):  # e.g. pretraining, then the task
            if kill["at_fit"] == n:
                handle = net.register_forward_pre_hook(_killed_at(10))  # after step 8's save
            part, _ = common.train(net, x, y, steps=14, batch_size=8, lr=lr, seed=seed + n,
                                   checkpoint_every=4)
            if kill["at_fit"] == n:
                handle.remove()
            resumed_at.append(part.resumed_at)
            losses += part
        return Run({"acc": 1.0 / (1.0 + losses[-1])}, curve_of(losses, 7))

    def the_check(store: Path) -> Check:
        return Check("resume", ["ctrl"], [1e-3, 3e-3, 1e-2], train, Control("ctrl", 0.0),
                     [], log=lambda msg: None, seeds=(0,), store=RunStore(store, {}))

    straight = run_check(the_check(tmp_path / "a.jsonl"))
    kill["at_fit"] = 1
    with pytest.raises(KeyboardInterrupt):
        run_check(the_check(tmp_path / "b.jsonl"))
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1  # the killed fit's
    kill["at_fit"], resumed_at[:] = None, []
    again = run_check(the_check(tmp_path / "b.jsonl"))
    assert resumed_at[:2] == [0, 8]  # the first fit from scratch, the second from step 8
    assert again.models["ctrl"].values("acc") == straight.models["ctrl"].values("acc")
    assert [r.curve for r in again.models["ctrl"].runs] == \
        [r.curve for r in straight.models["ctrl"].runs]
    assert not list((tmp_path / "checkpoints").iterdir())  # none left behind


def _killed_at(call: int):
    """A forward pre-hook that stops the process's work at the ``call``-th forward pass (a
    KeyboardInterrupt, as Ctrl-C; the protocol must not catch it)."""
    seen = [0]

    def hook(*_):
        seen[0] += 1
        if seen[0] == call:
            raise KeyboardInterrupt

    return hook


def test_claim_checkpoints_live_under_runs_not_beside_a_store_in_docs(monkeypatch):
    import common

    monkeypatch.delenv("LRA_CLAIM_CHECKPOINTS", raising=False)
    store = RunStore(common.REPO / "docs" / "claims" / "x_runs.jsonl", {}, fresh=True)
    base = store.checkpoint_base("k")
    assert base.parent == common.REPO / "runs" / "claims" / "checkpoints"
    assert base.name.startswith("x_runs-") and base != store.checkpoint_base("k2")


def test_a_protocol_run_logs_its_progress_under_its_name(tmp_path):
    """Inside a check, every fit reports a quarter of its steps at a time to the check's log,
    named by the run (model, rate, seed); a fit outside a check stays silent."""
    import common
    import torch

    from lrm import LRModel, ModelConfig

    x = torch.randint(0, 8, (32, 12), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, dims=1)

    def train(model: str, lr: float, seed: int) -> Run:
        torch.manual_seed(seed)
        net = LRModel(ModelConfig(mixer="attention", d_model=16, n_layers=1, vocab_size=8,
                                  head="lm"))
        losses, _ = common.train(net, x, y, steps=8, batch_size=8, lr=lr, seed=seed)
        return Run({"acc": 1.0 / (1.0 + losses[-1])}, curve_of(losses, 4))

    logged: list[str] = []
    run_check(Check("prog", ["ctrl"], [1e-3, 3e-3, 1e-2], train, Control("ctrl", 0.0), [],
                    log=logged.append, seeds=(0,), store=None, max_extend=0))
    mine = [m for m in logged if m.startswith("[prog] ctrl lr 0.003 seed 0: step")]
    assert [m.split("step ")[1].split(",")[0] for m in mine] == ["2/8", "4/8", "6/8", "8/8"]
    assert all("s/step" in m and "loss " in m for m in mine)
    # outside a check nothing reports
    net = LRModel(ModelConfig(mixer="attention", d_model=16, n_layers=1, vocab_size=8,
                              head="lm"))
    before = len(logged)
    common.train(net, x, y, steps=4, batch_size=8)
    assert len(logged) == before


def test_only_run_trains_the_named_runs_and_the_full_check_reads_them_back(tmp_path):
    """--only-run (a second process filling a long sweep): exactly the named (rate, seed) runs
    of every model train into the store, nothing is judged, and the full check then trains
    only what is missing; bad values and a report path are refused."""
    import argparse

    from common import protocol_options

    models = {"ctrl": (peaked(3e-3, 0.99), {1: -0.01}), "m": (peaked(3e-3, 0.7), {1: 0.02})}
    path = tmp_path / "runs.jsonl"
    p = argparse.ArgumentParser()
    protocol_options(p, lrs=(1e-3, 3e-3, 1e-2))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(["--store", str(path), "--only-run", "0.003", "1",
                         "--only-run", "0.01", "0"])
    store = run_store(args)
    assert store.only == [(3e-3, 1), (1e-2, 0)]
    some: list = []
    claim = Claim("m beats nothing", [Cmp(("m", "acc"), 0.5, 0.0)])
    res = run_check(check(models, [claim], calls=some, store=store))
    assert some == [("ctrl", 3e-3, 1), ("ctrl", 1e-2, 0), ("m", 3e-3, 1), ("m", 1e-2, 0)]
    assert res.only_runs and not res.verdicts and not res.control_ok
    text = render(res)
    assert "nothing is judged" in text and "| m | 0.003 | 1 |" in text and "passed" not in text
    rest: list = []
    full = run_check(check(models, [claim], calls=rest,
                           store=run_store(p.parse_args(["--store", str(path)]))))
    assert rest == [("ctrl", 1e-3, 0), ("ctrl", 3e-3, 0), ("m", 1e-3, 0), ("m", 3e-3, 0)]
    assert full.verdicts and full.control_ok
    assert full.models["m"].runs[1].from_store  # the second seed came from the other process
    for bad in (["--only-run", "0", "1"], ["--only-run", "0.003", "1.5"],
                ["--only-run", "0.003", "1", "--out", str(tmp_path / "r.md")]):
        with pytest.raises(SystemExit):
            run_store(p.parse_args(["--store", str(path), *bad]))


def test_a_store_sees_runs_another_process_appends_after_it_opened(tmp_path):
    """Two processes filling one check (--only-run beside the full command) share the store
    file: a run appended by one after the other opened it is found on the other's next miss,
    and a line still being written is read only once it is whole."""
    path = tmp_path / "runs.jsonl"
    first, second = RunStore(path, {"steps": 10}), RunStore(path, {"steps": 10})
    key = first.key("c", "m", 3e-3, 1)
    assert second.get(key) is None
    first.add(key, Run({"acc": 0.75}, [(1, 2.0)], 5.0, 3e-3, 1))
    got = second.get(key)
    assert got is not None and got.scores == {"acc": 0.75} and got.curve == [(1, 2.0)]
    other = first.key("c", "m", 1e-2, 0)
    line = json.dumps({"key": other, "run": asdict(Run({"acc": 0.5}, [], 1.0, 1e-2, 0))})
    with path.open("a") as f:  # half a line: the writer has not finished it
        f.write(line[:20])
    assert second.get(other) is None
    with path.open("a") as f:
        f.write(line[20:] + "\n")
    assert second.get(other).scores == {"acc": 0.5}
    # --fresh: the runs in the file when it opened are not reused, later ones are
    fresh = RunStore(path, {"steps": 10}, fresh=True)
    assert fresh.get(key) is None and fresh.get(other) is None


def test_a_run_another_process_stored_meanwhile_is_not_stored_twice(tmp_path):
    """spt.py's second process may train a run that the full command was waiting for; the
    waiting process gets the same run back and must not append a second line for it."""
    path = tmp_path / "runs.jsonl"
    other = RunStore(path, {})

    def train(model: str, lr: float, seed: int) -> Run:
        acc = 0.95 if lr == 3e-3 else 0.9  # the best rate inside the sweep: no extension
        if lr == 1e-3 and seed == 0:  # finished beside us meanwhile
            other.add(other.key("dup", model, lr, seed), Run({"acc": acc}, [], 7.0, lr, seed))
        return Run({"acc": acc}, [(1, 0.1)], 7.0)

    run_check(Check("dup", ["ctrl"], [1e-3, 3e-3, 1e-2], train, Control("ctrl", 0.0), [],
                    log=lambda msg: None, seeds=(0, 1), store=RunStore(path, {})))
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4  # three rates on seed 0, the best on seed 1
