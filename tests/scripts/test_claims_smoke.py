"""The claim checks' smoke mode (tiny sizes and steps) runs end to end and writes a report with
the control, the verdict table, both seeds and the wall time (scripts/claims/gdn.py,
scripts/claims/oryx.py, fox.py, s4.py, landmark.py and longmamba.py, in-process)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

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
    ("fox", ["--models", "fox, b_f = 0", "--factors", "2"]),
    ("s4", ["--tasks", "copy"]),
    ("landmark", ["--topk", "2"]),
])
def test_smoke_mode_writes_a_report(script, extra, tmp_path):
    out = tmp_path / "report.md"
    _load(script).main(["--smoke", "--out", str(out), "--json", str(tmp_path / "r.json"),
                        "--store", str(tmp_path / "store.jsonl"), *extra])
    text = out.read_text()
    assert text.startswith("Command: `python ")
    assert "Control: attention" in text and "| claim | verdict |" in text
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


def test_fox_claims_compare_the_longest_test_with_the_control_and_with_the_training_length():
    fox = _load("fox")
    extrap, keeps = fox.claims(list(fox.MODELS), "acc@8L")
    assert {(c.a, c.b) for c in extrap.parts} == {
        ((m, "acc@8L"), ("attention + RoPE", "acc@8L")) for m in ("fox, b_f = 0", "fox, b_f = 3")}
    assert all(c.margin > 0 for c in extrap.parts)
    assert {(c.a, c.b) for c in keeps.parts} == {
        ((m, "acc@8L"), (m, "acc")) for m in ("fox, b_f = 0", "fox, b_f = 3")}
    assert all(c.margin < 0 for c in keeps.parts)
    assert fox.claims(["attention + RoPE", "attention, no PE"], "acc@8L") == []


def test_s4_tasks_put_the_answer_exactly_delay_steps_back():
    s4 = _load("s4")
    x, y = s4.delayed_copy(3, 200, 64, seed=1)
    assert (y[:, :64] == -100).all() and torch.equal(y[:, 64:], x[:, :136])
    # the filter at D = 1024 is the original kernel; a shorter D scales tau and period with it
    x, y = s4.long_filter(2, 300, 64, tau=25.0, period=18.75, seed=2)
    sign = 3 - 2 * x.double()
    ell = torch.arange(64, dtype=torch.float64)
    h = torch.exp(-ell / 25.0) * torch.cos(2 * math.pi * ell / 18.75)
    t = 150
    s_t = (h * sign[:, t - ell.long()]).sum(1)
    assert torch.equal(y[:, t], torch.where(s_t > 0, 1, 2))


def test_longmamba_check_scores_each_run_with_and_without_the_filter(tmp_path):
    out, store = tmp_path / "lm.md", tmp_path / "lm.jsonl"
    _load("longmamba").main(["--smoke", "--out", str(out), "--store", str(store)])
    text = out.read_text()
    assert "Control: mamba2 van@256" in text
    assert "| van@256 | lm@256 | van@512 | lm@512 | van |" in text
    assert "the filter raises accuracy at 512" in text
    assert len(store.read_text().splitlines()) == 4  # three rates and the second seed


def test_landmark_check_reports_per_query_and_chunked_retrieval(tmp_path):
    out = tmp_path / "la.md"
    _load("landmark").main(["--smoke", "--out", str(out), "--store", str(tmp_path / "s.jsonl")])
    text = out.read_text()
    for mode in ("grouped", "top2", "top4", "top2/C16", "top4/C16"):
        assert f"| landmark, {mode} | " in text  # every mode, in both tables
        assert f"| {mode}@2L " in text or f" {mode}@2L |" in text
    with pytest.raises(SystemExit):  # a chunk that is not whole blocks
        _load("landmark").main(["--chunk", "20", "--store", str(tmp_path / "t")])


def test_longmamba_threshold_diagnosis_reports_every_global_channel_and_restores_b(capsys):
    """The thresholds part of longmamba_numerics.py on a tiny calibrated model: one line per
    global channel, one accuracy line per scale b, and the filters' configs as they were."""
    import lrm.longmamba as lm
    from lra.data import recall_tasks

    numerics = _load("longmamba_numerics")
    torch.manual_seed(0)
    model = _load("longmamba").build("mamba2")
    Xc, _ = recall_tasks.passkey(4, 32, n_digits=1, seed=0)
    lm.calibrate(model, [Xc], train_len=32)
    n_global = sum(int(f.global_channels().sum()) for f in lm.filters(model))
    assert n_global > 0  # at initialisation the slow heads span 32 tokens
    before = [f.config for f in lm.filters(model)]
    numerics.thresholds(model, {128: recall_tasks.passkey(4, 128, n_digits=1, seed=1)},
                        [0.5, 2.0], n_inputs=2)
    out = capsys.readouterr().out
    assert out.count(" channel ") == n_global
    assert "θ × 0.5: L=128: " in out and "θ × 2: L=128: " in out
    assert [f.config for f in lm.filters(model)] == before
    assert all(not f._forward_hooks for f in lm.filters(model))


def test_gdn_check_at_another_size_trains_on_that_task_under_its_own_name(tmp_path):
    """--seq-len and --vocab reach the data and the model (the report states them) and name
    the check, so runs at another size never mix with the default size's in a store."""
    store = tmp_path / "s.jsonl"
    out = tmp_path / "g.md"
    _load("gdn").main(["--smoke", "--models", "gdn", "--seq-len", "32", "--vocab", "40",
                       "--out", str(out), "--store", str(store)])
    assert "MQAR, L=32, vocab 40," in out.read_text()
    checks = {json.loads(json.loads(ln)["key"])["check"] for ln in store.read_text().splitlines()}
    assert checks == {"MQAR with 8 pairs, L 32, vocab 40"}
    _load("gdn").main(["--smoke", "--models", "gdn", "--out", str(out), "--store", str(store)])
    checks = {json.loads(json.loads(ln)["key"])["check"] for ln in store.read_text().splitlines()}
    assert checks == {"MQAR with 8 pairs, L 32, vocab 40", "MQAR with 8 pairs"}


def test_titans_models_option_trains_a_subset_and_judges_only_complete_claims(tmp_path):
    """--models keeps the control and the named models; a claim missing one of its models is
    not judged, and the report says so instead of showing an empty verdict table; a second
    process with the other models reads the shared store and judges the claim."""
    store, out = tmp_path / "s.jsonl", tmp_path / "t.md"
    titans = _load("titans")
    titans.main(["--smoke", "--part", "window", "--models", "Titans MAC", "--out", str(out),
                 "--store", str(store)])
    text = out.read_text()
    assert "No claim judged" in text and "| claim | verdict |" not in text
    trained = {json.loads(json.loads(ln)["key"])["model"]
               for ln in store.read_text().splitlines()}
    assert trained == {"attention", "Titans MAC"}
    titans.main(["--smoke", "--part", "window", "--models", "sliding-window attention",
                 "Titans MAG", "Titans MAL", "Titans MAC", "--out", str(out),
                 "--store", str(store)])
    assert "| claim | verdict |" in out.read_text()
    keys = [json.loads(ln)["key"] for ln in store.read_text().splitlines()]
    assert len(keys) == len(set(keys))  # the first process's runs were read back, not retrained
    with pytest.raises(SystemExit):
        titans.main(["--smoke", "--models", "MAC", "--store", str(store)])
