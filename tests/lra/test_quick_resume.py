"""Resumable runs (lra.quick.fit's ``checkpoint``): a run killed mid-way and started again ends
bit for bit where the uninterrupted run ends; a checkpoint of another run, or a damaged one, is
refused with what to do; the recall arena gives each run its own checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

from lra import quick
from lra.leaderboard import arena
from lrm import LRModel, ModelConfig

# dropout draws from torch's global generator at every step, so the test also sees whether
# that generator is restored; 40 examples in batches of 8 reshuffle every 5 steps
CFG = {"mixer": "attention", "d_model": 16, "n_layers": 1, "vocab_size": 8, "head": "lm",
       "dropout": 0.1}
STEPS, EVERY, KILL_AT = 23, 4, 13  # the checkpoint at step 12 falls inside an epoch


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def data(n: int = 40, L: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (n, L), generator=g)
    return x, x.roll(-1, dims=1)


def model(seed: int) -> LRModel:
    torch.manual_seed(seed)
    return LRModel(ModelConfig(**CFG))


class Killed(RuntimeError):
    pass


def kill_at(m: torch.nn.Module, call: int) -> None:
    """Make the model's ``call``-th forward pass raise, as a killed process stops mid-run."""
    seen = [0]

    def hook(*_):
        seen[0] += 1
        if seen[0] == call:
            raise Killed(f"killed at forward pass {call}")

    m.register_forward_pre_hook(hook)


def test_a_killed_run_resumes_to_the_same_weights_and_losses(tmp_path, one_thread):
    x, y = data()
    kw = {"steps": STEPS, "batch_size": 8, "lr": 3e-3, "seed": 1, "checkpoint_every": EVERY}
    straight = model(0)
    torch.manual_seed(123)  # the state dropout draws from, the same in both runs
    ref = quick.fit(straight, x, y, **kw)
    assert ref.resumed_at == 0 and ref.elapsed_s > 0

    ckpt = tmp_path / "run.pt"
    killed = model(0)
    kill_at(killed, KILL_AT + 1)
    torch.manual_seed(123)
    with pytest.raises(Killed):
        quick.fit(killed, x, y, checkpoint=ckpt, **kw)
    assert ckpt.is_file()  # written at step 12, the last multiple of 4 before the kill
    # a new process: other initial weights, another global random state; all must come back
    torch.manual_seed(999)
    resumed_model = model(7)
    resumed = quick.fit(resumed_model, x, y, checkpoint=ckpt, **kw)
    assert resumed.resumed_at == (KILL_AT // EVERY) * EVERY
    assert list(resumed) == list(ref)  # every step's loss, the ones before the kill included
    for (name, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert not ckpt.exists()  # a finished run leaves no checkpoint behind


def test_a_checkpoint_of_another_run_or_a_damaged_one_is_refused(tmp_path, one_thread):
    x, y = data()
    kw = {"steps": STEPS, "batch_size": 8, "lr": 3e-3, "seed": 1, "checkpoint_every": EVERY}
    ckpt = tmp_path / "run.pt"
    m = model(0)
    kill_at(m, 8)
    with pytest.raises(Killed):
        quick.fit(m, x, y, checkpoint=ckpt, **kw)
    with pytest.raises(ValueError, match=r"belongs to another run.*delete it"):
        quick.fit(model(0), x, y, checkpoint=ckpt, **{**kw, "lr": 1e-2})
    with pytest.raises(ValueError, match="belongs to another run"):
        quick.fit(model(0), x[:32], y[:32], checkpoint=ckpt, **kw)  # other data
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a write cut short (not by fit, which is atomic)
    with pytest.raises(ValueError, match=r"could not be read.*delete it"):
        quick.fit(model(0), x, y, checkpoint=ckpt, **kw)
    with pytest.raises(ValueError, match="checkpoint_every"):
        quick.fit(model(0), x, y, checkpoint=ckpt, **{**kw, "checkpoint_every": 0})


def test_each_arena_run_has_its_own_checkpoint(tmp_path, monkeypatch):
    cell = arena.grid(arena.FULL, ["attention"])[0]
    other_lr = {**cell, "lr": cell["lr"] * 3}
    other_seed = {**cell, "seed": 1}
    paths = {arena.checkpoint_path(c) for c in (cell, other_lr, other_seed)}
    assert len(paths) == 3
    assert arena.checkpoint_path(dict(cell)) == arena.checkpoint_path(cell)  # stable
    assert all(p.parent == arena.CHECKPOINTS for p in paths)
    monkeypatch.setenv("LRA_RECALL_CHECKPOINTS", str(tmp_path))
    assert arena.checkpoint_path(cell).parent == tmp_path


def test_an_arena_run_continues_from_its_checkpoint(tmp_path, monkeypatch, one_thread):
    """run_cell passes the run's checkpoint to fit and records where a run resumed."""
    monkeypatch.setenv("LRA_RECALL_CHECKPOINTS", str(tmp_path))
    cell = {**arena.grid(arena.QUICK, ["attention"])[0], "steps": 12, "n_train": 64,
            "n_test": 8, "d": 8, "L": 16, "kv": 2, "eval_lengths": []}
    real_fit, calls = quick.fit, []

    def fit(*args, **kwargs):
        calls.append(kwargs["checkpoint"])
        return real_fit(*args, **{**kwargs, "checkpoint_every": 5})

    monkeypatch.setattr(quick, "fit", fit)
    ref = arena.run_cell(cell)
    assert calls == [arena.checkpoint_path(cell)] and "resumed_at_step" not in ref
    # kill the same run after its checkpoint at step 10, then run the cell again
    monkeypatch.setattr(LRModel, "forward", _dies_after(LRModel.forward, 11))
    with pytest.raises(Killed):
        arena.run_cell(cell)
    monkeypatch.undo()
    monkeypatch.setenv("LRA_RECALL_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr(quick, "fit", fit)
    again = arena.run_cell(cell)
    assert again["resumed_at_step"] == 10
    assert again["loss_curve"] == ref["loss_curve"] and again["acc"] == ref["acc"]
    assert not arena.checkpoint_path(cell).exists()


def _dies_after(forward, n: int):
    seen = [0]

    def wrapped(self, *args, **kwargs):
        if self.training:
            seen[0] += 1
            if seen[0] > n:
                raise Killed("killed")
        return forward(self, *args, **kwargs)

    return wrapped


def test_a_timed_out_run_that_makes_progress_goes_on_and_a_hung_one_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_RECALL_CHECKPOINTS", str(tmp_path))
    cell = [c for c in arena.grid(arena.QUICK, ["attention"]) if c["kind"] == "state"][:1]
    ckpt = arena.checkpoint_path(cell[0])
    sittings = []

    def launch(c, timeout, **_):  # two sittings that time out while writing checkpoints, then done
        sittings.append(c)
        if len(sittings) < 3:
            ckpt.write_bytes(bytes(len(sittings)))
            os.utime(ckpt, ns=(len(sittings) * 10**9,) * 2)
            return {**c, "status": "error", "error": "timeout: killed after 5 s", "wall_s": 5}
        ckpt.unlink()
        return {**c, "status": "ok", "error": None, "acc": 0.5, "wall_s": 1, "loss_curve": []}

    monkeypatch.setattr(arena, "_launch", launch)
    (rec,) = arena.run(cell, tmp_path / "runs.json", jobs=1, progress=False)
    assert rec["status"] == "ok" and len(sittings) == 3
    # hung: times out without a new checkpoint (none at all, then an unchanged one)
    for existing in (False, True):
        sittings.clear()
        if existing:
            ckpt.write_bytes(b"x")

        def hung(c, timeout, **_):
            sittings.append(c)
            if len(sittings) > 2:
                raise RuntimeError("a hung run was launched again and again")
            return {**c, "status": "error", "error": "timeout: killed after 5 s", "wall_s": 5}

        monkeypatch.setattr(arena, "_launch", hung)
        (rec,) = arena.run(cell, tmp_path / "hung.json", jobs=1, progress=False)
        assert rec["status"] == "error" and len(sittings) == 1
        # an error that is not a timeout is never relaunched, checkpoint or not
        sittings.clear()
        monkeypatch.setattr(arena, "_launch", lambda c, t, **_: sittings.append(c) or {
            **c, "status": "error", "error": "exit 1: boom", "wall_s": 1})
        arena.run(cell, tmp_path / "err.json", jobs=1, progress=False)
        assert len(sittings) == 1
