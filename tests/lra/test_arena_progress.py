"""A run in flight shows its progress: lra.quick.fit reports (steps done, recent loss), the
arena's child keeps a progress file, and the parent passes each new state of it on (to the
progress bar) while it waits; a child's error, a signal and the timeout still end the run as
before."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from lra import quick
from lra.leaderboard import arena
from lrm import LRModel, ModelConfig


def test_fit_reports_every_n_steps_and_after_the_last_with_the_recent_mean_loss():
    torch.manual_seed(0)
    m = LRModel(ModelConfig(mixer="attention", d_model=8, n_layers=1, vocab_size=8, head="lm"))
    x = torch.randint(0, 8, (16, 6), generator=torch.Generator().manual_seed(0))
    seen = []
    losses = quick.fit(m, x, x.roll(-1, 1), steps=7, batch_size=4,
                       on_progress=lambda step, loss, per: seen.append((step, loss, per)),
                       progress_every=3)
    assert [s for s, _, _ in seen] == [3, 6, 7]
    for step, loss, per in seen:
        assert loss == pytest.approx(sum(losses[step - 3:step]) / 3)
        assert per > 0
    with pytest.raises(ValueError, match="progress_every"):
        quick.fit(m, x, x, steps=1, progress_every=0)


def test_the_child_keeps_a_progress_file_up_to_the_last_step(tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_RECALL_CHECKPOINTS", str(tmp_path))
    cell = {**arena.grid(arena.QUICK, ["attention"])[0], "steps": 60, "n_train": 64,
            "n_test": 8, "d": 8, "L": 16, "kv": 2, "eval_lengths": []}
    n = torch.get_num_threads()
    try:
        arena.run_cell(cell, tmp_path / "progress.json")
    finally:
        torch.set_num_threads(n)
    info = arena.read_progress(tmp_path / "progress.json")
    assert info["step"] == info["steps"] == 60 and info["loss"] > 0
    assert info["s_per_step"] > 0
    assert arena.read_progress(tmp_path / "missing.json") is None


class FakeChild:
    """A child that writes the progress file once per wait() and then exits with ``code``."""

    def __init__(self, cmd, *, stderr, code=0, stages=3, **_):
        self.prog = Path(cmd[cmd.index("--progress") + 1])
        self.out = Path(cmd[cmd.index("--result") + 1])
        self.stderr, self.code, self.stages, self.calls = stderr, code, stages, 0
        self.killed = False

    def wait(self, timeout=None):
        if self.killed:
            return -9
        self.calls += 1
        if self.calls <= self.stages:
            # the same state twice in a row is passed on once
            step = 10 * ((self.calls + 1) // 2)
            arena.write_progress(self.prog, {"step": step, "steps": 30, "loss": 1.0,
                                             "s_per_step": 0.5})
            raise subprocess.TimeoutExpired("child", timeout)
        if self.code == 0:
            self.out.write_text(json.dumps({"acc": 0.5}))
        elif self.code > 0:  # a signal's victim prints nothing
            self.stderr.write("Traceback\nValueError: bad option\n")
            self.stderr.flush()
        return self.code

    def kill(self):
        self.killed = True


def test_the_parent_passes_each_new_progress_on_and_keeps_the_child_s_outcome(monkeypatch):
    monkeypatch.setattr(arena, "POLL_S", 0.0)
    (cell,) = [c for c in arena.grid(arena.QUICK, ["attention"])[:1]]
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: FakeChild(cmd, **kw))
    seen = []
    rec = arena._launch(cell, 60, on_progress=seen.append)
    assert rec["status"] == "ok" and rec["acc"] == 0.5
    assert [i["step"] for i in seen] == [10, 20]
    assert arena.progress_text(seen[-1]) == "step 20/30, loss 1, 0.50 s/step, ~5 s left"
    # a failing child keeps its last lines; a child killed by a signal says it was stopped
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: FakeChild(cmd, code=1, **kw))
    assert arena._launch(cell, 60)["error"] == "exit 1: Traceback | ValueError: bad option"
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: FakeChild(cmd, code=-15, **kw))
    assert arena._launch(cell, 60)["error"].startswith("stopped by SIGTERM")
    # the timeout kills the child while it is still running
    children = []

    def slow(cmd, **kw):
        children.append(FakeChild(cmd, stages=10**6, **kw))
        return children[-1]

    monkeypatch.setattr(subprocess, "Popen", slow)
    rec = arena._launch(cell, 0)
    assert rec["error"] == "timeout: killed after 0 s" and children[0].killed


def test_the_short_label_names_the_run():
    (cell,) = [c for c in arena.grid(arena.QUICK, ["attention"])[:1]]
    c = {**cell, "L": 256, "kv": 16, "d": 64, "lr": 1e-3, "seed": 1}
    assert arena._short_label(c) == "attention 256:16:64 lr=0.001 seed=1"
    assert arena.progress_text({"step": 5, "steps": 10, "loss": 2.345, "s_per_step": None}) == (
        "step 5/10, loss 2.35")
    assert arena.progress_text({"step": 3000, "steps": 6000, "loss": 2.31,
                                "s_per_step": 0.31}).endswith("0.31 s/step, ~16 min left")
    assert arena.progress_text({"step": 10, "steps": 10, "loss": 1.0, "s_per_step": 0.3}) == (
        "step 10/10, loss 1, 0.30 s/step")
