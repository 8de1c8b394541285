"""scripts/lra_step_time.py: the model it times is the one the leaderboard setting trains (its
width, depth, direction, head and sequence length), and the table's cap column follows the
setting's time cap and step count."""

from __future__ import annotations

import pytest
from _helpers import load_script

from lra.leaderboard.runner import SETTINGS


def _load():
    return load_script("lra_step_time")


def test_the_timed_model_is_the_settings_model():
    st = _load()
    model, opts, L = st.build("listops-lra", "listops", "s4d")
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.bidirectional) == (64, 2, True)
    assert (cfg.head, cfg.n_classes, L) == ("classify", 10, 2048)  # the setting's seq_len
    assert opts["lr"] > 0
    # a causal-only mixer is built causal, as the leaderboard builds it
    assert st.build("listops-lra", "listops", "landmark")[0].cfg.bidirectional is False
    # Pathfinder's pixels: 1024 tokens of 256 intensities, two classes
    pf, _, L = st.build("pathfinder-easy", "pathfinder", "s4d")
    assert (pf.cfg.vocab_size, pf.cfg.n_classes, L) == (256, 2, 1024)


def test_table_row_and_cap(monkeypatch, capsys):
    st = _load()
    monkeypatch.setattr(st, "step_seconds", lambda *a, **k: 4.0)  # 4 s a step
    st.main(["--setting", "listops-lra", "--mixers", "s4d"])
    out = capsys.readouterr().out
    cap = int(60 * SETTINGS["listops-lra"]["budget_minutes"] / 4.0)  # 900 of 2000 steps
    assert f"| s4d | 4.00 | 133 min | {cap:,} |" in out
    monkeypatch.setattr(st, "step_seconds", lambda *a, **k: 0.5)  # the step count binds
    st.main(["--setting", "listops-lra", "--mixers", "s4d"])
    assert "| s4d | 0.50 | 17 min | 2,000 |" in capsys.readouterr().out


def test_a_step_runs_and_a_task_outside_the_setting_is_refused(capsys):
    st = _load()
    st.main(["--setting", "cpu", "--task", "listops", "--mixers", "s4d", "--batch", "2",
             "--repeats", "1"])
    assert "| s4d |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        st.main(["--setting", "listops-lra", "--task", "pathfinder"])
