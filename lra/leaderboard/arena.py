"""``lra leaderboard --suite recall``: the recall arena, every mixer on MQAR and passkey.

    lra leaderboard --suite recall --quick             a smoke grid, written under runs/recall/
    lra leaderboard --suite recall --publish           the full arena into docs/recall.md
    lra leaderboard --suite recall --mixers gdn fox --jobs 2 --steps 800
    lra leaderboard --suite recall --cells 64:4:64 passkey     two cells of the grid, every mixer
    lra leaderboard --suite recall --jobs 16 --device cuda    on one GPU (scripts/device/)
    lra leaderboard --suite recall --render --publish --merge OUT/recall_runs.json

Two questions, after Zoology (Arora et al., 2023, "Zoology: Measuring and Improving Recall in
Efficient Language Models", Fig. 2): which mixer recalls at what **state size**, and how far
does it **extrapolate**.

- **MQAR on two axes.** Each cell trains a 2-layer ``LRModel`` (``head="lm"``) on MQAR at
  length L with a number of key-value pairs, at width d. Difficulty axis: (L, pairs) = (64, 4),
  (128, 8), (256, 16) at d = 64; state axis: (128, 8) at d = 32, 64, 128 (five cells per mixer,
  (128, 8, 64) on both). Steps per cell per mixer from a learning-curve check
  (:data:`ARENA_STEPS`, else 2000; at least :data:`CELL_MIN_STEPS` in a cell whose control
  needed more). The record holds the accuracy on the query positions of
  fresh test sequences (also per quarter of the sequence, ``acc_by_position``, which separates
  answers found inside a window or segment from those carried across it), the parameter
  count, the built mixer's sizes and ``state_size(L)`` of every layer (floats held per
  sequence after L tokens: the KV cache for attention, the recurrent state otherwise), so
  accuracy can be drawn against state size.
- **The sweep protocol** (lra/leaderboard/sweep.py, shared with the LRA grid): each cell sweeps
  its mixer family's learning rates (and any rate :data:`CELL_RATES` adds to one mixer's sweep
  in one cell, where a diagnosis found its window between two rungs of the ladder), a best rate
  at an end extends the sweep, the best rate of
  every MQAR cell is re-run on a second seed, and a run whose loss went non-finite is listed as
  diverged, never a result.
- **Extrapolation.** Runs of the (128, 8, 64) MQAR cell and the passkey cell are tested at 2L,
  4L, 8L and 16L (same number of pairs; longer sequences put queries further from their keys);
  the page shows the best rate's model.

Every run is one child process (``python -m lra.leaderboard.arena --cell JSON``) with one
torch thread and a timeout; ``--jobs`` runs at once (default: the machine's cores), on
``--device`` (several share one GPU). While they train, the progress bar names the runs in
flight with their step, recent training loss, seconds per step and time left (each child keeps
a small progress file that the parent reads every ``POLL_S`` seconds). A finished run's record
goes into the store at once, atomically, and re-running the same command skips every run the
store already holds (keyed by every option that changes it, lr and seed included, and the
grid's version). A run in flight keeps a checkpoint every 250 steps (:func:`checkpoint_path`,
under ``runs/recall_checkpoints/``), so a killed sweep continues its unfinished runs where they
stopped when the command runs again, and each ends exactly as it would have without the
interruption. A run stopped by the timeout that wrote a checkpoint in that time is continued at
once (the timeout catches hung runs, not slow ones); the record then says from which step
(``resumed_at_step``), and ``fit_s`` counts every sitting. The store records
the commit, whether the tree was dirty and each run's device. By default the page and store
are ``runs/recall/recall.md`` and ``runs/recall/recall_runs.json``; ``docs/recall.md`` is
rewritten only with ``--publish``.

The vocabulary is 256, not Zoology's 8192: the LM head's cost grows with the vocabulary, and at
these widths it would dominate a CPU step. Keys and values still come from disjoint halves.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lra.leaderboard import sweep
from lra.leaderboard.store import (
    REPO,
    add_runs,
    checkpoint_file,
    device_name,
    git_commit,
    git_dirty,
    load_store,
    portable_command,
    repo_relative,
)
from lra.leaderboard.sweep import wait_child

VOCAB = 256
N_LAYERS = 2
BATCH = 32
N_TRAIN = 20_000
N_TEST = 256
EXTRAP = (2, 4, 8, 16)  # test lengths as multiples of the training length
# "still learning" also when the query cross-entropy was still >= 0.1 nats (about 95%
# accuracy in the arena's runs) and fell by more than a tenth in the last fifth of the steps
# (lra.leaderboard.sweep.still_improving, second clause)
LEARNING_FLOOR = 0.1

# The grid. ``mqar`` cells: (L, kv pairs, d) on two axes, after Zoology: the difficulty axis
# (L, pairs) = (64, 4), (128, 8), (256, 16) at d = 64, and the state axis (128, 8) at d = 32, 64,
# 128; the (128, 8, 64) cell is on both, five cells per mixer. Its runs are also tested at 2L..16L
# (``extrapolate``), so MQAR extrapolation costs no extra training. ``extrapolation`` cells:
# (task, L, kv) at one d. Learning rates: the sweep protocol (lra/leaderboard/sweep.py) unless a
# spec names its own ``lr`` list. ``skip``: (mixer, d) cells left out, with the reason, which the
# page lists among the missing cells. ``steps``: None = per mixer (:data:`ARENA_STEPS`).
DIFFICULTY = [(64, 4, 64), (128, 8, 64), (256, 16, 64)]
STATE = [(128, 8, 32), (128, 8, 64), (128, 8, 128)]
FULL: dict[str, Any] = {
    "mqar": {"cells": list(dict.fromkeys(DIFFICULTY + STATE)), "extrapolate": (128, 8, 64)},
    "extrapolation": {"cells": [("passkey", 64, 0)], "d": 64},
    "skip": {},
    "steps": None,
}
QUICK: dict[str, Any] = {
    "mqar": {"L_kv": [(64, 8)], "d": [32], "lr": [3e-3], "extrapolate_d": 32},
    "extrapolation": {"cells": [("passkey", 64, 0)], "d": 32, "lr": [3e-3]},
    "steps": 300,
}
TIMEOUT_S = 3600
# a run's checkpoint while it trains (lra.quick.fit): a sweep killed mid-run continues where it
# stopped when it runs again; a run stopped by TIMEOUT_S that is still writing them goes on
CHECKPOINTS = REPO / "runs" / "recall_checkpoints"
ARENA_VERSION = 2  # in every cell's key: records made before this grid never match its cells

# Steps per cell, per mixer, with the measurement behind each number. A mixer without a
# measurement trains DEFAULT_STEPS (the arena's count since its first sweep).
DEFAULT_STEPS = 2000
ARENA_STEPS: dict[str, tuple[int, str]] = {
    "attention": (2000, "docs/recall_learning_curve.md: MQAR L=128, 16 pairs, d=64 at 3e-3 "
                        "reached 31.6% after 1000 steps and 100% after 2000"),
    "mamba2": (2000, "docs/recall_learning_curve.md: MQAR L=128, 16 pairs, d=64 at 3e-3 "
                     "reached 5.2% after 1000 steps and 100% after 2000"),
    # the 2000-step grid flagged these as still learning; the diagnosis page's 6000-step
    # runs of the same cells (seed 0, the cell's best rate) decide
    "gdn": (6000, "docs/recall_diagnosis.md: MQAR d=64 at 3e-3, seed 0: L=64, 4 pairs 24.2% "
                  "after 2000 steps, 99.9% after 6000; L=128, 8 pairs 11.8% -> 100%"),
    "oryx": (6000, "docs/recall_diagnosis.md: MQAR L=128, 8 pairs, d=64 at 3e-3, seed 0: "
                   "85.8% after 2000 steps, 99.7% after 6000"),
    "mamba": (6000, "docs/recall_diagnosis.md: MQAR d=64 at 3e-3, seed 0: L=64, 4 pairs 26.1% "
                    "after 2000 steps, 71.9% after 6000 (off the plateau after step 3000); "
                    "L=128, 8 pairs 15.2% -> 14.4%"),
}


def n_train_for(steps: int, batch: int) -> int:
    """Training sequences of a run: every sequence is seen about once, so no more are generated
    than steps × batch, and at most N_TRAIN."""
    return min(N_TRAIN, steps * batch)


# Cells that need more steps than some mixers' counts: a floor on every mixer's steps there,
# with the measurement behind it.
CELL_MIN_STEPS: dict[tuple[int, int, int], tuple[int, str]] = {
    (256, 16, 64): (6000, "docs/recall_diagnosis.md: at 3e-3, seed 0, attention reached 90.4% "
                          "with 2000 steps (still learning) and 100.0% with 6000; FoX 0.8% "
                          "with 2000 and 99.2% with 6000, its loss leaving the plateau at step "
                          "~2000 of the longer schedule"),
}


# Rates added to one mixer's sweep in one MQAR cell, with the measurement behind each. The
# family's ladder (1-3-10) leaves a 3.3x gap between 3e-3 and 1e-2; where a diagnosis found a
# mixer's window inside such a gap, the cell sweeps that rate too, on the first seed like the
# others, so the protocol can pick it and re-run it on the second seed. The page lists them.
CELL_RATES: dict[tuple[str, tuple[int, int, int]], tuple[tuple[float, ...], str]] = {
    ("mamba", (256, 16, 64)): ((5.5e-3,), "docs/recall_diagnosis.md: at 6000 steps, seed 0, "
                                          "3e-3 recalled 6.9% and 1e-2 0.8%, 5.5e-3 91.4%"),
}


def added_rates(mixer: str, cell: tuple[int, int, int]) -> tuple[float, ...]:
    """The rates :data:`CELL_RATES` adds to ``mixer``'s sweep in the MQAR cell (L, pairs, d)."""
    return CELL_RATES.get((mixer.split(":")[0], tuple(cell)), ((), ""))[0]


def cell_rates(mixer: str, cell: tuple[int, int, int]) -> list[float]:
    """The rates the first seed sweeps in an MQAR cell: the mixer family's
    (:func:`lra.leaderboard.sweep.rates_for`) and any :data:`CELL_RATES` adds there."""
    return sorted({*sweep.rates_for(mixer), *added_rates(mixer, cell)})


def steps_for(mixer: str, cell: tuple[int, int, int] | None = None) -> tuple[int, str]:
    """A mixer's training steps in the MQAR cell (L, pairs, d) (its count for any cell when
    ``cell`` is None), and where the number comes from."""
    n, why = ARENA_STEPS.get(mixer.split(":")[0], (DEFAULT_STEPS, "not measured: the default"))
    if cell is not None and tuple(cell) in CELL_MIN_STEPS:
        floor, cell_why = CELL_MIN_STEPS[tuple(cell)]
        if floor > n:
            return floor, f"at least {floor} in this cell ({cell_why})"
    return n, why


# Mixer options for the arena: none. Default head sizes now follow d (lrm.build("gdn", d=32)
# has head_dim 8; likewise Mamba-2, Oryx, Titans), so every mixer's state grows with d as built,
# and the arena measures the mixers as the library ships them. The earlier override (Gated
# DeltaNet with one head of width d) is gone; cells made with it carried it in their key
# (mixer_kwargs), and the key's ARENA_VERSION keeps cells made under the old defaults apart.
ARENA_KWARGS: dict[str, Any] = {}


# ============================================================================ one cell
KEY_FIELDS = ("suite", "version", "mixer", "task", "L", "kv", "d", "lr", "steps", "vocab",
              "n_layers", "batch", "eval_lengths", "mixer_kwargs", "seed", "n_train", "n_test")


# options only some runs set (a diagnosis's variants): in the key when present, so the keys of
# runs without them are what they were before these fields existed
OPTIONAL_KEY_FIELDS = ("model_kwargs",)


def _key_fields(c: dict[str, Any]) -> dict[str, Any]:
    return {**{k: c.get(k) for k in KEY_FIELDS},
            **{k: c[k] for k in OPTIONAL_KEY_FIELDS if c.get(k)}}


def cell_key(c: dict[str, Any]) -> str:
    """What makes two runs the same experiment (the store is searched by it on resume): every
    option that changes the run, the learning rate, the seed and the grid's version included."""
    return json.dumps(_key_fields(c), sort_keys=True)


def checkpoint_path(c: dict[str, Any]) -> Path:
    """The checkpoint file of run ``c``: one per run key, under :data:`CHECKPOINTS` (or the
    folder in ``LRA_RECALL_CHECKPOINTS``), removed when the run's training ends."""
    return checkpoint_file(cell_key(c), CHECKPOINTS, "LRA_RECALL_CHECKPOINTS")


def cell_of(c: dict[str, Any]) -> str:
    """The cell of a run: its key without the learning rate and the seed."""
    return json.dumps({k: v for k, v in _key_fields(c).items() if k not in ("lr", "seed")},
                      sort_keys=True)


def _mixer_options(mixer: Any) -> dict[str, Any]:
    """The built mixer's scalar settings (head sizes, state sizes...): what its defaults became
    at this width, stored with the run so a later change of defaults is visible."""
    return {k: v for k, v in sorted(vars(mixer).items())
            if not k.startswith("_") and k != "training" and isinstance(v, (int, float, bool, str))}


def run_cell(c: dict[str, Any], progress: Path | None = None) -> dict[str, Any]:
    """Train one model and test it (in the calling process); returns the metrics. ``progress``:
    a file kept up to date while it trains (:func:`write_progress`)."""
    import torch

    import lrm
    from lra import quick
    from lra.data import recall_tasks

    torch.set_num_threads(int(c.get("threads", 1)))
    torch.manual_seed(c["seed"])
    dev = torch.device(c.get("device_type") or "cpu")
    task, L = c["task"], c["L"]
    kw: dict[str, Any] = ({"vocab_size": c["vocab"], "num_kv_pairs": c["kv"]} if task == "mqar"
                          else {})
    vocab = recall_tasks.vocab_size_of(task, **kw)
    x, y = recall_tasks.make(task, c["n_train"], L, seed=c["seed"], **kw)
    model = lrm.LRModel(lrm.ModelConfig(mixer=c["mixer"], d_model=c["d"], n_layers=c["n_layers"],
                                        vocab_size=vocab, head="lm",
                                        mixer_kwargs=c.get("mixer_kwargs") or {},
                                        **(c.get("model_kwargs") or {}))).to(dev)
    def report(step: int, loss: float, per: float) -> None:
        write_progress(progress, {"step": step, "steps": c["steps"], "loss": loss,
                                  "s_per_step": per})

    losses = quick.fit(model, x.to(dev), y.to(dev), steps=c["steps"], batch_size=c["batch"],
                       lr=c["lr"], seed=c["seed"], checkpoint=checkpoint_path(c),
                       on_progress=report if progress is not None else None)
    lengths = [L, *c.get("eval_lengths", [])]
    tests = recall_tasks.extrapolation_sets(task, c["n_test"], lengths,
                                            seed=10_000 + c["seed"], **kw)
    acc = {str(n): quick.accuracy(model, tests[n][0].to(dev), tests[n][1].to(dev),
                                  batch_size=16) for n in lengths}
    # where in the sequence the answers were right: quarters of L at the training length
    by_pos = quick.accuracy_by_position(model, tests[L][0].to(dev), tests[L][1].to(dev),
                                        n_bins=4, batch_size=16)
    return {
        "acc": acc[str(L)], "acc_by_length": acc, "acc_by_position": by_pos,
        "params": sum(p.numel() for p in model.parameters()),
        "state_size": [int(b.mixer.state_size(L)) for b in model.blocks],
        "mixer_options": _mixer_options(model.blocks[0].mixer),
        "loss_curve": loss_curve(losses),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "diverged_at": next((i + 1 for i, v in enumerate(losses) if not math.isfinite(v)), None),
        "fit_s": round(losses.elapsed_s, 1),  # every sitting's, for a resumed run
        **({"resumed_at_step": losses.resumed_at} if losses.resumed_at else {}),
    }


def loss_curve(losses: Sequence[float], points: int = 20) -> list[list[float]]:
    """The training losses as about ``points`` [first step, mean loss] pairs, each the mean
    of an equal run of steps: what a run record keeps of its curve."""
    every = max(1, len(losses) // points)
    return [[i + 1, round(sum(losses[i:i + every]) / len(losses[i:i + every]), 4)]
            for i in range(0, len(losses), every)]


def write_progress(path: Path, info: dict[str, Any]) -> None:
    """A run's progress (steps done, steps, recent loss, seconds per step) as a small JSON
    file, replaced atomically so the parent never reads half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def read_progress(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet
        return None


def _child(cell_json: str, out: str, progress: str | None = None) -> None:
    res = run_cell(json.loads(cell_json), Path(progress) if progress else None)
    Path(out).write_text(json.dumps(res))


POLL_S = 2.0  # how often the parent looks at a run's progress file


def _launch(c: dict[str, Any], timeout: float,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one cell in a child process; always returns a record (status ok or error).
    ``on_progress(info)`` gets the child's progress (:func:`write_progress`) as it changes."""
    rec = {**c, "date": _dt.datetime.now().isoformat(timespec="seconds"), "status": "error",
           "error": None}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out, prog, err = (Path(tmp) / n for n in ("result.json", "progress.json", "stderr"))
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(err, "w", encoding="utf-8") as err_f:
            proc = subprocess.Popen([sys.executable, "-m", "lra.leaderboard.arena", "--cell",
                                     json.dumps(c), "--result", str(out), "--progress",
                                     str(prog)], cwd=str(REPO), env=env,
                                    stdout=subprocess.DEVNULL, stderr=err_f)
            seen: list[dict[str, Any] | None] = [None]

            def tick() -> None:  # each new state of the progress file, once
                info = read_progress(prog)
                if info is not None and info != seen[0]:
                    seen[0] = info
                    on_progress(info)

            try:
                code = wait_child(proc, t0 + timeout, every=POLL_S,
                                  tick=tick if on_progress is not None else None)
            except BaseException:  # as subprocess.run: the child does not outlive its parent
                proc.kill()
                raise
        if code is None:
            rec["error"] = f"timeout: killed after {timeout:.0f} s"
        elif code != 0:
            rec["error"] = exit_error(code, err.read_text(encoding="utf-8", errors="replace"))
        elif out.is_file():
            rec.update(json.loads(out.read_text()), status="ok")
        else:
            rec["error"] = "the cell wrote no result"
    rec["wall_s"] = round(time.time() - t0, 1)
    return rec


def exit_error(code: int, stderr: str) -> str:
    """A failed child's error line: its exit code and the last two lines it printed; a child
    killed by a signal (a negative code, which prints nothing) is named as stopped, since its
    run resumes from its checkpoint when launched again."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if lines or code >= 0:
        return f"exit {code}: " + " | ".join(lines[-2:])[-400:]
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"stopped by {name} (exit {code}); launched again, it resumes from its last checkpoint"


# ============================================================================ the grid
def grid(spec: dict[str, Any], mixers: Sequence[str], *, steps: int | None = None,
         seed: int = 0) -> list[dict[str, Any]]:
    """The first seed's runs of every cell of a grid spec (:data:`FULL`, :data:`QUICK`) for
    ``mixers``: each cell at each rate of its initial sweep (the spec's ``lr`` list, else the
    mixer family's, :func:`lra.leaderboard.sweep.rates_for`, with the cell's
    :data:`CELL_RATES`). The protocol adds the extensions
    and the second seed as results come in (:func:`run`)."""
    def n_steps(mixer: str, own: int | None = None,
                cell: tuple[int, int, int] | None = None) -> int:
        # --steps sets every cell's count; else the spec's; else the mixer's measured count
        return int(steps or own or spec.get("steps") or steps_for(mixer, cell)[0])

    def base(mixer: str, n: int) -> dict[str, Any]:
        return {"suite": "recall", "version": ARENA_VERSION, "vocab": VOCAB,
                "n_layers": N_LAYERS, "batch": BATCH, "steps": n, "seed": seed,
                "n_train": n_train_for(n, BATCH), "n_test": spec.get("n_test", N_TEST)}

    def opts(mixer: str, d: int) -> dict[str, Any]:
        f = ARENA_KWARGS.get(mixer)
        return f(d) if f else {}

    skip = spec.get("skip", {})
    cells = []
    m = spec["mqar"]
    # the explicit form lists (L, kv, d) cells; the product form is (L, kv) x d
    mq = ([tuple(c) for c in m["cells"]] if "cells" in m
          else [(L, kv, d) for d in m["d"] for L, kv in m["L_kv"]])

    def is_ext(L: int, kv: int, d: int) -> bool:
        if "cells" in m:
            return (L, kv, d) == tuple(m.get("extrapolate") or ())
        return d == m.get("extrapolate_d")

    for (L, kv, d), mixer in itertools.product(mq, mixers):
        for lr in m.get("lr") or cell_rates(mixer, (L, kv, d)):
            ext = [f * L for f in EXTRAP] if is_ext(L, kv, d) else []
            cells.append({**base(mixer, n_steps(mixer, cell=(L, kv, d))), "kind": "state",
                          "mixer": mixer,
                          "task": "mqar", "L": L, "kv": kv, "d": d, "lr": lr,
                          "eval_lengths": ext, "mixer_kwargs": opts(mixer, d)})
            if (mixer, d) in skip:
                cells[-1]["skip"] = skip[(mixer, d)]
    e = spec["extrapolation"]
    for mixer, (task, L, kv) in itertools.product(mixers, e["cells"]):
        for lr in e.get("lr") or sweep.rates_for(mixer):
            cells.append({**base(mixer, n_steps(mixer, e.get("steps"))), "kind": "extrapolation",
                          "mixer": mixer, "task": task, "L": L, "kv": kv, "d": e["d"], "lr": lr,
                          "eval_lengths": [f * L for f in EXTRAP],
                          "mixer_kwargs": opts(mixer, e["d"])})
    # the order cells are run in: MQAR at the extrapolated width, then the extrapolation cells,
    # then the other widths, so a sweep stopped early still has both figures
    first = [c for c in cells if c["kind"] == "state" and c["eval_lengths"]]
    ext_cells = [c for c in cells if c["kind"] == "extrapolation"]
    return first + ext_cells + [c for c in cells if c not in first and c not in ext_cells]


def cell_name(c: dict[str, Any]) -> str:
    """A cell's short name, as ``--cells`` takes it: ``L:pairs:d`` for MQAR (``128:8:64``), the
    task's name for an extrapolation cell (``passkey``)."""
    return f"{c['L']}:{c['kv']}:{c['d']}" if c["kind"] == "state" else c["task"]


def select_cells(cells: list[dict[str, Any]], names: Sequence[str] | None
                 ) -> list[dict[str, Any]]:
    """The cells whose :func:`cell_name` is in ``names`` (all for None); an unknown name is
    refused with the grid's names, before anything runs."""
    if not names:
        return cells
    known = list(dict.fromkeys(cell_name(c) for c in cells))
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"--cells: no cell {', '.join(bad)} in this grid; its cells are "
                         f"{' '.join(known)} (MQAR as L:pairs:d)")
    return [c for c in cells if cell_name(c) in names]


def _score(r: dict[str, Any]) -> float | None:
    return r.get("acc")


def _headline(c: dict[str, Any]) -> bool:
    """The MQAR cells are the arena's numbers (both seeds); passkey trains on the first seed."""
    return c["kind"] == "state"


def plan(cells: list[dict[str, Any]], recs: list[dict[str, Any]], protocol: Any = None
         ) -> dict[str, Any]:
    """Every cell's runs under the sweep protocol given the store (lra/leaderboard/sweep.py)."""
    return sweep.plan([c for c in cells if not c.get("skip")], recs, cell_of=cell_of,
                      key_of=cell_key, score=_score, protocol=protocol or sweep.PROTOCOL,
                      headline=_headline)


def _label(c: dict[str, Any]) -> str:
    return (f"{c['mixer']} {c['task']} L={c['L']} kv={c['kv']} d={c['d']} lr={c['lr']:g}"
            + (f" seed={c['seed']}" if c.get("seed") else "")
            + (f" (sweep extended {c['extension']})" if c.get("extension") else ""))


MAX_SHOWN = 2  # runs in flight named after the progress bar (the rest are counted)


def _short_label(c: dict[str, Any]) -> str:
    cell = f"{c['L']}:{c['kv']}:{c['d']}" if c["task"] == "mqar" else f"{c['task']} L={c['L']}"
    return (f"{c['mixer']} {cell} lr={c['lr']:g}"
            + (f" seed={c['seed']}" if c.get("seed") else ""))


def progress_text(info: dict[str, Any]) -> str:
    """``step 3000/6000, loss 2.31, 0.31 s/step, ~16 min left`` from a run's progress file (the
    time left is the training's; the test after it takes seconds)."""
    text = f"step {info['step']}/{info['steps']}, loss {info['loss']:.3g}"
    per = info.get("s_per_step")
    if per:
        left = per * (info["steps"] - info["step"])
        text += f", {per:.2f} s/step"
        if left > 0:
            text += f", ~{left / 60:.0f} min left" if left >= 90 else f", ~{left:.0f} s left"
    return text


def run(cells: list[dict[str, Any]], store: Path, *, jobs: int, timeout: float = TIMEOUT_S,
        command: str | None = None, progress: bool = True, protocol: Any = None,
        device: str | None = None) -> list[dict[str, Any]]:
    """Run the cells the store does not hold yet, ``jobs`` at a time, each record saved as it
    finishes. With a ``protocol`` (the CLI always passes one) the sweep goes on as results come
    in: extensions at an end, then the other seeds on the best rate. Returns the new records."""
    # the commit is taken at each launch (one below): a run's process imports the code anew
    prov = {"device": device_name(device), "grid_command": command,
            "device_type": device or "cpu"}
    n_skip = sum(1 for c in cells if c.get("skip"))
    live = [c for c in cells if not c.get("skip")]
    done = {cell_key(r) for r in load_store(store) if sweep.finished(r)}
    print(f"[recall] {len(cells)} first-seed runs, {sum(cell_key(c) in done for c in live)} "
          f"already in {store}, {n_skip} left out by the grid, {jobs} at a time"
          + ("; the sweep protocol adds extensions and seeds as results come in"
             if protocol else ""), flush=True)

    bar = None
    if progress:
        from tqdm import tqdm

        # the total grows as the sweep adds extensions and seeds
        bar = tqdm(total=0, unit="run", dynamic_ncols=True, desc="recall arena")

    def say(msg: str) -> None:  # a line above the progress bar, or printed without one
        if bar is not None:
            bar.write(msg)
        else:
            print(msg, flush=True)

    in_flight: dict[str, str] = {}  # label -> progress, shown after the bar
    lock = threading.Lock()

    def show(label: str, info: dict[str, Any] | None) -> None:  # from the runs' threads
        with lock:
            if info is None:
                in_flight.pop(label, None)
            else:
                in_flight[label] = progress_text(info)
            if bar is not None:
                shown = [f"{k}: {v}" for k, v in list(in_flight.items())[:MAX_SHOWN]]
                more = len(in_flight) - len(shown)
                bar.set_postfix_str("; ".join(shown) + (f"; {more} more" if more > 0 else ""))

    def one(c: dict[str, Any]) -> dict[str, Any]:
        # so a sweep that spans commits records what each of its runs trained with
        c = {**c, **prov, "commit": git_commit(), "dirty": git_dirty()}
        ckpt, label = checkpoint_path(c), _short_label(c)
        try:
            while True:
                before = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
                rec = _launch(c, timeout, on_progress=lambda info: show(label, info))
                after = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
                timed_out = rec["status"] != "ok" and str(rec["error"]).startswith("timeout")
                # a run stopped by the timeout while it was still writing checkpoints is slow,
                # not hung: it goes on from its checkpoint; one that wrote none stays an error
                if not (timed_out and after is not None and after != before):
                    return rec
                say(f"{_label(c)}: timed out after {timeout:.0f} s; continuing from its "
                    f"checkpoint")
        finally:
            show(label, None)

    def started(todo: list[dict[str, Any]]) -> None:
        if bar is not None:
            bar.total += len(todo)
            bar.refresh()

    def record(c: dict[str, Any], rec: dict[str, Any]) -> None:  # from the driving thread only
        add_runs(store, [rec])
        div = sweep.diverged(rec) if rec["status"] == "ok" else None
        what = (rec["error"] if rec["status"] != "ok" else
                f"diverged (loss not finite from step {div})" if div is not None else
                f"acc {rec['acc']:.3f}")
        say(f"{_label(c)}: {what} ({rec['wall_s']:.0f} s)")
        if bar is not None:
            bar.update(1)

    try:
        if protocol is None:  # exactly the cells given
            todo = [c for c in live if cell_key(c) not in done]
            started(todo)
            new = []
            for c, rec in sweep.each_finished(one, todo, jobs):
                record(c, rec)
                new.append(rec)
            return new
        return sweep.drive(live, one, lambda: load_store(store), cell_of=cell_of,
                           key_of=cell_key, score=_score, protocol=protocol,
                           headline=_headline, jobs=jobs, on_result=record, on_launch=started)
    finally:
        if bar is not None:
            bar.close()


# ============================================================================ the page
def diverged(r: dict[str, Any]) -> int | None:
    """The first step whose training loss was not finite (:func:`lra.leaderboard.sweep.diverged`,
    shared with the LRA grid)."""
    return sweep.diverged(r)


def current(recs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of this grid's version (older grids' records stay in the store, unshown)."""
    return [r for r in recs if r.get("version") == ARENA_VERSION]


def in_grid(recs: Iterable[dict[str, Any]], cells: Iterable[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """The records of ``cells``' grid: same cell (every option but the rate and the seed, the
    step count included), so a run made at a cell's earlier step count stays in the store but
    is not counted beside the runs at its current one. Records of cells outside ``cells`` (other
    mixers, other cells) are kept."""
    cells = list(cells)
    grid_cells = {cell_of(c) for c in cells}
    shown = {_short(c) for c in cells}
    return [r for r in current(recs) if cell_of(r) in grid_cells or _short(r) not in shown]


def _short(r: dict[str, Any]) -> tuple:
    return (r["kind"], r["mixer"], r["task"], r["L"], r["kv"], r["d"])


def summaries(recs: Iterable[dict[str, Any]]) -> dict[tuple, Any]:
    """{(kind, mixer, task, L, kv, d): CellSummary} of this grid's records: the best rate of the
    first seed (ties to the middle of the sweep) and every seed's result there."""
    recs = current(recs)
    any_rec = {cell_of(r): r for r in recs}
    out = sweep.summarize(recs, cell_of=cell_of, key_of=cell_key, score=_score)
    return {_short(any_rec[cell]): s for cell, s in out.items()}


def best_lr(recs: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The best-rate record (first seed) of each (kind, mixer, task, L, kv, d)."""
    return {k: s.best for k, s in summaries(recs).items() if s.best is not None}


def extrapolated(best: dict[tuple, dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """{(task, L, kv, d): {mixer: record}} for every best record tested at more than its
    training length (extrapolation cells, and the MQAR cell marked ``extrapolate``)."""
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for k, r in sorted(best.items()):
        if len(r.get("acc_by_length", {})) > 1:
            out.setdefault((k[2], k[3], k[4], k[5]), {})[k[1]] = r
    return out


def missing_runs(cells: list[dict[str, Any]], recs: list[dict[str, Any]]
                 ) -> list[tuple[dict[str, Any], str]]:
    """(run, why) for each run the protocol asks for that has no result yet: never run, its last
    error, diverged, or left out by the grid; a cell whose sweep is not settled says so."""
    recs = current(recs) if any(r.get("version") for r in recs) else recs
    last_err = {cell_key(r): r.get("error") for r in recs if r.get("status") != "ok"}
    ok = {cell_key(r) for r in recs if sweep.is_result(r)}
    for r in recs:
        step = diverged(r) if r.get("status") == "ok" else None
        if step is not None:
            at = f" from step {step}" if step > 0 else ""
            last_err[cell_key(r)] = f"diverged: the training loss was not finite{at}"
    out = [(c, c["skip"]) for c in cells if c.get("skip")]
    for st in plan(cells, recs).values():
        runs = [(c, last_err.get(cell_key(c)) or "not run yet")
                for c in st.runs if cell_key(c) not in ok]
        settled = st.best_lr is not None and any(c["seed"] != st.runs[0]["seed"]
                                                 for c in st.runs)
        if runs and not settled and st.best_lr is not None:
            c, why = runs[-1]
            runs[-1] = (c, why + " (the sweep may extend or add a seed after this)")
        out += runs
    return out


def _fmt_state(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}K" if n >= 1e3 else str(n))


ZOOLOGY = ("Zoology (Arora et al., 2023, Fig. 2) reports: attention solves MQAR at every model "
           "width (its KV cache grows with L); the recurrent and convolutional mixers need a "
           "state that grows with the number of key-value pairs, and at a fixed state they "
           "fall as pairs and length grow; gated and input-dependent recurrences (Mamba, "
           "GLA-like, delta rules) need less state than long convolutions (H3, Hyena, S4-like).")


def _cell_text(s: Any) -> str:
    """``mean (seed0 / seed1) @ lr, state`` of one cell summary; "still learning" when a seed's
    loss was still falling at its end (:func:`lra.leaderboard.sweep.still_improving` with
    :data:`LEARNING_FLOOR`):
    the cell's steps, not the mixer, set that number."""
    if s.best is None:
        return "diverged" if any(w.startswith("diverged") for _, w in s.rates) else ""
    from lra.leaderboard.sweep import still_improving

    seeds = " / ".join(f"{100 * r['acc']:.1f}" for _, r in sorted(s.seeds.items()))
    mean = s.mean(_score)
    learning = any(still_improving(r.get("loss_curve") or [], floor=LEARNING_FLOOR)
                   for r in s.seeds.values())
    return (f"{100 * mean:.1f} ({seeds}) @ {s.best['lr']:g}"
            + (" (end of sweep)" if s.capped else "")
            + (" (still learning)" if learning else "")
            + f", {_fmt_state(sum(s.best['state_size']))}")


def render(recs: list[dict[str, Any]], cells: list[dict[str, Any]], *, store_name: str,
           plots: tuple[str, ...], notes: str | None) -> str:
    from lra.leaderboard.render import NOTES_BEGIN, NOTES_END

    every = recs
    recs = in_grid(recs, cells)
    summ = summaries(recs)
    best = {k: s.best for k, s in summ.items() if s.best is not None}
    out = ["# Recall arena", "",
           f"Generated by `lra leaderboard --suite recall --publish` (lra/leaderboard/arena.py) "
           f"from the run store `{store_name}`; never edited by hand. Each run: a {N_LAYERS}-layer "
           f"model with an LM head, trained on generated sequences (vocabulary {VOCAB}, batch "
           f"{BATCH}, AdamW with warmup and cosine decay), scored on the recall positions of "
           f"{N_TEST} fresh test sequences. Accuracy in %: the mean over seeds at the cell's "
           f"best learning rate (each seed in brackets), `@` the rate, then the state size "
           f"(floats per sequence summed over the layers after L tokens). \"end of sweep\": "
           f"the best rate is still at an end of the extended sweep; \"still learning\": a "
           f"seed's training loss still fell over the last fifth of its steps (by more than 5% "
           f"of its whole fall, or by more than a tenth while it was still above "
           f"{LEARNING_FLOOR:g}), so more steps would have moved the number.", "",
           "## Protocol", "", sweep.PROTOCOL.describe() + ".", "", sweep.rates_table(), "",
           "Steps per cell: " + "; ".join(f"{m} {n} ({why})" for m, (n, why)
                                          in sorted(ARENA_STEPS.items()))
           + f"; every other mixer {DEFAULT_STEPS} (not measured)."
           + "".join(f" The cell L={L}, {kv} pairs, d={d} trains at least {n} steps "
                     f"({why})." for (L, kv, d), (n, why) in CELL_MIN_STEPS.items())
           + "".join(f" In the cell L={L}, {kv} pairs, d={d} {m} also sweeps "
                     f"{', '.join(f'{lr:g}' for lr in lrs)}, between the rungs of its ladder "
                     f"({why}; marked \"added\" in the sweep table)."
                     for (m, (L, kv, d)), (lrs, why) in CELL_RATES.items()), ""]
    grid_cells = [(c["L"], c["kv"], c["d"]) for c in cells if c["kind"] == "state"]
    cols = list(dict.fromkeys(grid_cells)) or sorted({k[3:] for k in best if k[0] == "state"})
    mixers = sorted({k[1] for k in summ} | {c["mixer"] for c in cells})
    if cols:
        def axis(L: int, kv: int, d: int) -> str:
            tags = [t for t, cs in (("difficulty", DIFFICULTY), ("state", STATE))
                    if (L, kv, d) in cs]
            return f" ({', '.join(tags)})" if tags else ""

        out += ["## MQAR", "",
                "| mixer | " + " | ".join(f"L={L}, {kv} pairs, d={d}{axis(L, kv, d)}"
                                         for L, kv, d in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for m in mixers:
            row = [_cell_text(summ[("state", m, "mqar", L, kv, d)])
                   if ("state", m, "mqar", L, kv, d) in summ else "" for L, kv, d in cols]
            if any(row):
                out.append(f"| {m} | " + " | ".join(row) + " |")
        out.append("")
    for (task, L, kv, d), by_mixer in extrapolated(best).items():
        rows = sorted(by_mixer.items())
        lengths = sorted({int(n) for _, r in rows for n in r["acc_by_length"]})
        what = f"MQAR, {kv} pairs" if task == "mqar" else "passkey"
        out += [f"### Extrapolation: {what}, trained at L = {L}, d = {d} (best rate, seed "
                f"{sweep.PROTOCOL.seeds[0]})", "",
                "| mixer | " + " | ".join(f"{n}" + (" (train)" if n == L else "")
                                         for n in lengths) + " |",
                "|---|" + "---|" * len(lengths)]
        for m, r in rows:
            out.append(f"| {m} | " + " | ".join(
                f"{100 * r['acc_by_length'][str(n)]:.1f}" if str(n) in r["acc_by_length"]
                else "" for n in lengths) + " |")
        out.append("")
    miss = missing_runs(cells, recs)
    out += ["## Reading against the published shape", "", ZOOLOGY, "",
            "The point-by-point reading (each mixer's row above against this shape) is the "
            "first of the notes below, for the cells that have their results"
            + (f"; {len(miss)} runs are still missing (listed under Missing cells)."
               if miss else "; none is missing."), ""]
    if summ:
        out += ["<details><summary>every cell's sweep</summary>", "",
                "| cell | rates (status; extensions marked) | best | seeds at the best |",
                "|---|---|---|---|"]
        for k, s_ in sorted(summ.items(), key=lambda kv: str(kv[0])):
            added = added_rates(k[1], k[3:]) if k[0] == "state" else ()
            rates = ", ".join(f"{lr:g} {w}" + (" (added)" if lr in added else "")
                              for lr, w in s_.rates)
            seeds = ", ".join(f"seed {sd}: {100 * r['acc']:.1f} ({r.get('device', '?')})"
                              for sd, r in sorted(s_.seeds.items()))
            out.append(f"| {k[1]} {k[2]} L={k[3]} kv={k[4]} d={k[5]} | {rates} | "
                       f"{s_.best['lr'] if s_.best else '–'} | {seeds} |")
        out += ["", "</details>", ""]
    ok = [r for r in recs if sweep.is_result(r)]
    if ok:
        walls = [r["wall_s"] for r in ok if r.get("wall_s")] or [0.0]
        cmds = sorted({r.get("grid_command") for r in ok if r.get("grid_command")})
        commits = sorted({str(r.get("commit")) + (" + uncommitted changes" if r.get("dirty")
                                                  else "") for r in ok})
        devices: dict[str, int] = {}
        for r in ok:
            devices[str(r.get("device"))] = devices.get(str(r.get("device")), 0) + 1
        out += ["## How these were made", "",
                "Commands: " + "; ".join(f"`{c}`" for c in cmds), "",
                f"{len(ok)} runs; wall time per run {min(walls):.0f}–{max(walls):.0f} s, "
                f"{sum(walls) / 3600:.2f} run-hours in all (runs in parallel, one torch "
                f"thread each); steps per run: "
                f"{', '.join(str(s) for s in sorted({r['steps'] for r in ok}))}; code: "
                f"commit {', '.join(commits)}. Each run carries its own device (the sweep "
                f"table names it per seed): "
                + "; ".join(f"{d} ({n} runs)" for d, n in sorted(devices.items())) + ".", ""]
    old = len(every) - len(recs)
    if old:
        out += [f"The store also keeps {old} records of earlier grids (other defaults, other "
                f"cells, earlier step counts), not shown here; the first grid's page is kept as "
                f"[recall_v1.md](recall_v1.md).", ""]
    div = [r for r in recs if r.get("status") == "ok" and diverged(r) is not None]
    if div:
        out += ["## Runs that diverged", "",
                "Not counted in the tables: their training loss became NaN or inf.", ""]
        out += [f"- {_label(r)}: loss not finite from step {diverged(r)}" for r in div]
        out.append("")
    out += ["## Missing cells", ""]
    # priced from every record of this grid's version: runs at a cell's earlier step count too
    est = [cpu_seconds(c, current(every)) for c, _ in miss]
    if not miss:
        out += ["None: every run of the grid has a result."]
    else:
        timed = [e for e in est if e is not None]
        if timed:
            out += [f"Training time still to spend, at the pace of the CPU runs already in the "
                    f"store for the same mixer and cell (one torch thread, as the lanes ran "
                    f"them): about {sum(timed) / 3600:.1f} CPU-hours for "
                    + (f"the {len(miss)} run{'s' * (len(miss) != 1)}." if len(timed) == len(miss)
                       else f"{len(timed)} of the {len(miss)} runs; the other "
                            f"{len(miss) - len(timed)} have no CPU run of their cell yet."),
                    ""]
    if miss and len(miss) <= 40:
        out += [f"{len(miss)} run{'s' * (len(miss) != 1)} without a result:", ""]
        out += [f"- {_label(c)}: {why}" + (f" (about {e / 60:.0f} min)" if e is not None else "")
                for (c, why), e in zip(miss, est, strict=True)]
    elif miss:  # a long list says little: count the runs by mixer and reason, naming the cells
        counts: dict[tuple[str, str], dict[str, int]] = {}
        hours: dict[tuple[str, str], float] = {}
        for (c, why), e in zip(miss, est, strict=True):
            by_cell = counts.setdefault((c["mixer"], why), {})
            by_cell[cell_name(c)] = by_cell.get(cell_name(c), 0) + 1
            hours[(c["mixer"], why)] = hours.get((c["mixer"], why), 0.0) + (e or 0.0) / 3600
        out += [f"{len(miss)} runs have no result (cells as `--cells` names them, MQAR as "
                f"L:pairs:d):", ""]
        out += [f"- {mixer}: {sum(c.values())} run{'s' * (sum(c.values()) != 1)}, {why}: "
                + ", ".join(f"{cell} ({n})" for cell, n in c.items())
                + (f"; about {hours[(mixer, why)]:.1f} CPU-hours" if hours[(mixer, why)] else "")
                for (mixer, why), c in sorted(counts.items())]
    out += [""] + [f"![{alt}]({p})" + "\n" for alt, p in
                   zip(("accuracy against state size", "extrapolation",
                        "accuracy against learning rate"), plots, strict=False)]
    out += [NOTES_BEGIN, (notes or "").strip(), NOTES_END, ""]
    return "\n".join(out)


def cpu_seconds(c: dict[str, Any], recs: Iterable[dict[str, Any]]) -> float | None:
    """The training seconds run ``c`` should take on a CPU: the median seconds per step of the
    finished CPU runs of the same mixer and cell (any rate, seed or step count) times its steps;
    None when there is none."""
    per = sorted(r["fit_s"] / r["steps"] for r in recs
                 if sweep.is_result(r) and _short(r) == _short(c) and r.get("fit_s")
                 and r.get("steps") and (r.get("device_type") or "cpu") == "cpu")
    return per[len(per) // 2] * c["steps"] if per else None


def _style(mixers: Iterable[str]) -> dict[str, dict[str, Any]]:
    """One color and marker per mixer, the same in every panel and both figures."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: {"color": cmap(i % 10), "marker": "os^Dv"[i // 10 % 5], "ms": 3, "label": m}
            for i, m in enumerate(sorted(mixers))}


def _panels(n: int, width: float, legend_width: float):
    """A row of ``n`` accuracy panels (0-100%, grid) with room for a legend on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n + legend_width, 3.2), squeeze=False)
    for ax in axes[0]:
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    return fig, list(axes[0])


def _legend_entries(axes: list) -> tuple[list, list[str]]:
    """Every panel's curves, one entry per label, sorted: the last panel may hold only some
    mixers (a cell not yet run for the others)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    labels = sorted(entries)
    return [entries[lb] for lb in labels], labels


def _save(fig, axes: list, path: Path) -> None:
    """The legend beside the panels, never over a curve; then the file."""
    import matplotlib.pyplot as plt

    fig.legend(*_legend_entries(axes), fontsize=7, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def state_points(recs: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, list]]:
    """{(L, kv): {mixer: [(state size, accuracy %), ...]}} over the widths d of the MQAR cells:
    each point the table's number (the mean over seeds at the cell's best rate)."""
    out: dict[tuple[int, int], dict[str, list]] = {}
    for k, s in sorted(summaries(recs).items()):
        if k[0] == "state" and s.best is not None:
            out.setdefault((k[3], k[4]), {}).setdefault(k[1], []).append(
                (sum(s.best["state_size"]), 100 * s.mean(_score)))
    return {lk: {m: sorted(p) for m, p in by.items()} for lk, by in out.items()}


def plot_state(recs: list[dict[str, Any]], path: Path) -> None:
    """Zoology-style: MQAR accuracy against state size (log x), one curve per mixer over d
    (:func:`state_points`)."""
    import matplotlib

    points = state_points(recs)
    panels = sorted(points) or [(0, 0)]
    style = _style({k[1] for k in best_lr(recs)})
    fig, axes = _panels(len(panels), 3.6, 1.6)
    for ax, (L, kv) in zip(axes, panels, strict=True):
        for m, pts in sorted(points.get((L, kv), {}).items()):
            ax.plot(*zip(*pts, strict=True), **style[m])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
        ax.set_title(f"MQAR L={L}, {kv} pairs", fontsize=9)
        ax.set_xlabel("state size (floats per sequence)", fontsize=8)
    _save(fig, axes, path)


def plot_extrapolation(recs: list[dict[str, Any]], path: Path) -> None:
    best = best_lr(recs)
    ext = extrapolated(best)
    panels = sorted(ext) or [("none", 0, 0, 0)]
    style = _style({k[1] for k in best})
    fig, axes = _panels(len(panels), 4.2, 1.2)
    for ax, (task, L, kv, d) in zip(axes, panels, strict=True):
        for mixer, r in sorted(ext.get((task, L, kv, d), {}).items()):
            pts = sorted((int(n), 100 * a) for n, a in r["acc_by_length"].items())
            ax.plot(*zip(*pts, strict=True), **style[mixer])
        ax.set_xscale("log", base=2)
        ax.axvline(L, color="k", lw=0.8, ls=":")
        ax.set_title(f"{task} trained at L={L}" + (f", {kv} pairs" if kv else "")
                     + f", d={d}", fontsize=9)
        ax.set_xlabel("test length", fontsize=8)
    _save(fig, axes, path)


def plot_lr(recs: list[dict[str, Any]], path: Path) -> None:
    """MQAR accuracy against learning rate (log x), one panel per cell, one line per mixer over
    the rates it swept (the first seed; diverged runs are left out)."""
    rs = [r for r in current(recs) if r.get("kind") == "state" and sweep.is_result(r)
          and r.get("seed") in (0, None)]
    newest = sweep.newest_by(rs, cell_key)
    panels = sorted({(r["L"], r["kv"], r["d"]) for r in newest.values()}) or [(0, 0, 0)]
    style = _style({r["mixer"] for r in newest.values()})
    fig, axes = _panels(len(panels), 3.2, 1.6)
    for ax, (L, kv, d) in zip(axes, panels, strict=True):
        for m in sorted({r["mixer"] for r in newest.values()}):
            pts = sorted((r["lr"], 100 * r["acc"]) for r in newest.values()
                         if r["mixer"] == m and (r["L"], r["kv"], r["d"]) == (L, kv, d))
            if pts:
                ax.plot(*zip(*pts, strict=True), **style[m])
        ax.set_xscale("log")
        ax.set_title(f"MQAR L={L}, {kv} pairs, d={d}", fontsize=9)
        ax.set_xlabel("learning rate", fontsize=8)
    _save(fig, axes, path)


def write_outputs(store: Path, out: Path, cells: list[dict[str, Any]]) -> None:
    from lra.leaderboard.render import read_notes

    every = load_store(store)
    recs = in_grid(every, cells)  # the plots show what the tables count
    out.parent.mkdir(parents=True, exist_ok=True)
    p_state = out.with_name(out.stem + "_state.png")
    p_ext = out.with_name(out.stem + "_extrapolation.png")
    p_lr = out.with_name(out.stem + "_lr.png")
    plot_state(recs, p_state)
    plot_extrapolation(recs, p_ext)
    plot_lr(recs, p_lr)
    text = render(every, cells, store_name=repo_relative(store),
                  plots=(p_state.name, p_ext.name, p_lr.name), notes=read_notes(out))
    out.write_text(text, encoding="utf-8")
    print(f"[recall] wrote {out}, {p_state}, {p_ext} and {p_lr}", flush=True)


# ============================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    from lra.leaderboard.store import add_output_args

    ap = argparse.ArgumentParser(prog="lra leaderboard --suite recall",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="the smoke grid (QUICK); never "
                    "written under docs/")
    ap.add_argument("--mixers", nargs="+", default=None, help="default: every registered mixer")
    ap.add_argument("--cells", nargs="+", default=None, metavar="CELL",
                    help="run only these cells: MQAR as L:pairs:d (128:8:64), passkey by name "
                         "(default: the whole grid; the page always shows the whole grid)")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps per run (default: per mixer, ARENA_STEPS, else "
                         f"{DEFAULT_STEPS}, at least CELL_MIN_STEPS in the cells it names; "
                         f"quick {QUICK['steps']})")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="runs at once, one torch thread each (default: the cores)")
    ap.add_argument("--device", default=None, choices=("cpu", "cuda"),
                    help="where each run trains (default cpu; several --jobs share one GPU)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per run")
    ap.add_argument("--no-sweep", action="store_true",
                    help="run the first-seed runs of the grid only: no extensions, no second "
                         "seed (a smoke check of the machinery)")
    add_output_args(ap, "recall")
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--cell":  # a run: lra.quick.fit sets the allocator (lra/allocator.py)
        progress = argv[argv.index("--progress") + 1] if "--progress" in argv else None
        return _child(argv[1], argv[argv.index("--result") + 1], progress)
    from lra.leaderboard import store as st
    args = build_parser().parse_args(argv)
    import lrm

    mixers = args.mixers or lrm.available()
    for m in mixers:
        lrm.registry.canonical(m)  # an unknown name fails here, with the valid names
    out, store = st.output_paths(args, "recall")
    spec = QUICK if args.quick else FULL
    cells = grid(spec, mixers, steps=args.steps)
    if not args.render:
        if args.jobs < 1:
            raise SystemExit("--jobs must be >= 1")
        run(select_cells(cells, args.cells), store, jobs=args.jobs, timeout=args.timeout,
            device=args.device,
            protocol=None if args.no_sweep else sweep.PROTOCOL,
            command=portable_command("lra leaderboard --suite recall " + shlex.join(argv)))
    st.merge_stores(store, args.merge)
    # the page shows the store's whole grid: a run of some mixers must not drop the others'
    # missing cells from it
    write_outputs(store, out, page_cells(spec, mixers, load_store(store), steps=args.steps))
    return None


def page_cells(spec: dict[str, Any], mixers: Sequence[str], recs: list[dict[str, Any]], *,
               steps: int | None = None) -> list[dict[str, Any]]:
    """The grid a published page covers: that of the mixers named and of every mixer with a
    record of this grid's version in the store."""
    stored = {r["mixer"] for r in current(recs)}
    return grid(spec, list(dict.fromkeys([*mixers, *sorted(stored - set(mixers))])),
                steps=steps)


if __name__ == "__main__":
    main()
