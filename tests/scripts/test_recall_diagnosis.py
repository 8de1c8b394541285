"""scripts/recall_diagnosis.py: the arena's run of a cell with settings varied; the variants are
built as asked (cell fields, mixer options, model fields), a rerun skips what the store holds,
the written notes survive a re-render, and a setting that is none of these is refused."""

from __future__ import annotations

import pytest
from _helpers import load_script

from lra.leaderboard import arena


def test_variants_are_the_arena_run_with_the_settings_changed(tmp_path, monkeypatch):
    diag = load_script("recall_diagnosis")
    launched = []

    def fake(c, timeout, **_):
        launched.append(c)
        falling = c["vocab"] == 64
        curve = [[i * 100, (5.0 - 0.2 * i) if falling else max(1.0, 5.0 - i)] for i in range(20)]
        return {**c, "status": "ok", "acc": 0.9 if falling else 0.2, "wall_s": 3.0,
                "acc_by_length": {}, "state_size": [1], "date": "2026-01-01",
                "loss_curve": curve, "final_loss": curve[-1][1],
                # only one variant has the per-quarter accuracy and the training time over
                # every sitting (an older record has neither)
                **({"acc_by_position": [1.0, None, 0.8, 0.5], "fit_s": 1234.0}
                   if falling else {})}

    monkeypatch.setattr(arena, "_launch", fake)
    argv = ["gdn", "--cell", "64:4:64", "--vary", "vocab=64,256", "mixer.head_dim=8",
            "mlp_ratio=0", "steps=100", "--store", str(tmp_path / "s.json"), "--out",
            str(tmp_path / "d.md"), "--jobs", "1"]
    diag.main(argv)
    assert len(launched) == 2
    base = next(c for c in arena.grid(arena.FULL, ["gdn"])
            if arena.cell_name(c) == "64:4:64" and c["lr"] == 3e-3)
    for c in launched:
        assert (c["L"], c["kv"], c["d"], c["lr"], c["steps"]) == (64, 4, 64, 3e-3, 100)
        assert c["mixer_kwargs"] == {"head_dim": 8} and c["model_kwargs"] == {"mlp_ratio": 0}
        assert c["n_train"] == 100 * c["batch"]  # the arena's rule for the new step count
        assert {k: c[k] for k in ("batch", "n_layers", "n_test")} == {
            k: base[k] for k in ("batch", "n_layers", "n_test")}
    assert sorted(c["vocab"] for c in launched) == [64, 256]
    # the variant's options are in its key: it never matches the arena's own run
    assert arena.cell_key(launched[0]) != arena.cell_key({**launched[0], "model_kwargs": {}})
    page = (tmp_path / "d.md").read_text()
    rows = [ln for ln in page.splitlines() if ln.startswith("| 0.003 |")]
    assert len(rows) == 2 and "## gdn: MQAR L=64, 4 pairs, d=64" in page
    assert any("| 64 |" in r and "| 90.0 | 100 / – / 80 / 50 | yes |" in r for r in rows)
    assert any("| 256 |" in r and "| 20.0 | – | no |" in r for r in rows)
    # the time shown is the training over every sitting where the record has it, else the wall
    assert any("| 64 |" in r and r.endswith("| 1234 |") for r in rows)
    assert any("| 256 |" in r and r.endswith("| 3 |") for r in rows)
    assert all("mixer.head_dim=8, mlp_ratio=0" in r for r in rows)
    # notes written into the page survive; a rerun trains nothing new
    (tmp_path / "d.md").write_text(page.replace("<!-- notes -->\n", "<!-- notes -->\nvocab!\n"))
    diag.main(argv)
    assert len(launched) == 2 and "vocab!" in (tmp_path / "d.md").read_text()
    # a render alone names the command that made the runs, not itself
    diag.main(["gdn", "--render", "--store", str(tmp_path / "s.json"), "--out",
               str(tmp_path / "d.md")])
    last = (tmp_path / "d.md").read_text().splitlines()[-1]
    assert "--vary vocab=64,256" in last and "--render" not in last


def test_a_setting_that_is_no_field_or_option_is_refused(tmp_path):
    diag = load_script("recall_diagnosis")
    with pytest.raises(SystemExit, match="'mlp_ratoi' is not a cell field"):
        diag.main(["gdn", "--vary", "mlp_ratoi=0", "--store", str(tmp_path / "s.json"),
                   "--out", str(tmp_path / "d.md")])
    with pytest.raises(SystemExit, match="NAME=V1,V2"):
        diag.main(["gdn", "--vary", "vocab", "--store", str(tmp_path / "s.json")])


def test_several_mixers_each_get_every_variant(tmp_path, monkeypatch):
    diag = load_script("recall_diagnosis")
    launched = []
    monkeypatch.setattr(arena, "_launch", lambda c, t, **_: launched.append(c) or {
        **c, "status": "ok", "acc": 0.5, "wall_s": 1.0, "acc_by_length": {}, "state_size": [1],
        "date": "2026-01-01", "loss_curve": [[1, 1.0]], "final_loss": 1.0})
    diag.main(["gdn", "mamba", "--vary", "steps=10,20", "--seeds", "0", "1", "--store",
               str(tmp_path / "s.json"), "--out", str(tmp_path / "d.md"), "--jobs", "1"])
    assert sorted((c["mixer"], c["steps"], c["seed"]) for c in launched) == sorted(
        (m, s, seed) for m in ("gdn", "mamba") for s in (10, 20) for seed in (0, 1))
    page = (tmp_path / "d.md").read_text()
    assert "## gdn: MQAR L=64, 4 pairs, d=64" in page and "## mamba: MQAR" in page
