"""``lra leaderboard --suite recall``: the recall arena, every mixer on MQAR and passkey.

    lra leaderboard --suite recall --quick             a smoke grid (about 10 min on 2 cores)
    lra leaderboard --suite recall                     the full arena (see FULL below)
    lra leaderboard --suite recall --mixers gdn fox --jobs 2 --steps 800
    lra leaderboard --suite recall --render            only rewrite docs/recall.md and the plots

Two questions, after Zoology (Arora et al., 2023, "Zoology: Measuring and Improving Recall in
Efficient Language Models", Fig. 2): which mixer recalls at what **state size**, and how far
does it **extrapolate**.

- **MQAR against state size.** Each cell trains a 2-layer ``LRModel`` (``head="lm"``) on MQAR at
  length L with a number of key-value pairs, at width d, for a fixed number of steps, at each
  learning rate of a small sweep; the best learning rate is kept, as Zoology does. The record
  holds the accuracy on the query positions of fresh test sequences, the parameter count and
  ``state_size(L)`` of every layer (floats held per sequence after L tokens: the KV cache for
  attention, the recurrent state otherwise), so accuracy can be drawn against state size.
- **Extrapolation.** MQAR and passkey models trained at L are tested at 2L, 4L, 8L and 16L
  (with the same number of pairs; longer sequences put queries further from their keys). The
  MQAR ones are the state cells at one width (``extrapolate_d``), tested at more lengths.

Every cell is one child process (``python -m lra.leaderboard.arena --cell JSON``) with one
torch thread and a timeout; ``--jobs`` cells run at once (default: the machine's cores). A
finished cell's record goes into the store (``docs/recall_runs.json``) at once, atomically, so
a killed sweep loses only the cells in flight, and re-running the same command skips every cell
the store already holds (same mixer, task, L, pairs, d, lr, steps and settings). The store
records the commit and whether the tree was dirty.

The vocabulary is 256, not Zoology's 8192: the LM head's cost grows with the vocabulary, and at
these widths it would dominate a CPU step. Keys and values still come from disjoint halves.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lra.leaderboard.store import (
    REPO,
    add_runs,
    device_name,
    git_commit,
    git_dirty,
    load_store,
    repo_relative,
)

VOCAB = 256
N_LAYERS = 2
BATCH = 32
N_TRAIN = 20_000
N_TEST = 256
EXTRAP = (2, 4, 8, 16)  # test lengths as multiples of the training length

# The full arena and the smoke grid, cut to fit 2 hours on 2 cores (the cost of a cell was
# measured per mixer and width; see the notes in docs/recall.md). ``mqar`` cells: (L, kv
# pairs) x d x lr; the cells at ``extrapolate_d`` are also tested at 2L..16L, so MQAR
# extrapolation costs no extra training. ``extrapolation`` cells: (task, L, kv) trained for
# their own number of steps at one d. ``skip``: (mixer, d) cells left out, with the reason, which
# the page lists among the missing cells. Steps from a learning-curve check
# (docs/recall_learning_curve.md).
_OUT = "left out to keep the arena within 2 hours on 2 cores"
FULL: dict[str, Any] = {
    "mqar": {"L_kv": [(128, 16)], "d": [32, 64], "lr": [3e-3], "extrapolate_d": 32},
    "extrapolation": {"cells": [("passkey", 64, 0)], "d": 32, "lr": [3e-3], "steps": 1000},
    "skip": {("mamba", 64): f"{_OUT}: about 74 min on one thread (the other mixers at d = 64 "
                            "take 2-22 min)",
             ("titans", 64): f"{_OUT}: Titans diverged on MQAR at d = 32 at 3e-3 and 1e-3, and "
                             "a d = 64 cell takes about 22 min",
             ("oryx", 64): f"{_OUT} (about 14 min): Oryx reached 97% at d = 32 already"},
    "steps": 2000,
}
QUICK: dict[str, Any] = {
    "mqar": {"L_kv": [(64, 8)], "d": [32], "lr": [3e-3], "extrapolate_d": 32},
    "extrapolation": {"cells": [("passkey", 64, 0)], "d": 32, "lr": [3e-3]},
    "steps": 300,
}
TIMEOUT_S = 3600

# Mixer options for the arena. Gated DeltaNet's default head (K = 256, V = 512, the 1.3B
# model's) would give every width the same matrix state; here its head width follows d, so its
# state grows with d as every other mixer's does.
ARENA_KWARGS: dict[str, Any] = {"gdn": lambda d: {"head_dim": d}}
# Learning rates of a mixer that diverges at the grid's own (extrapolation cells take the first):
# Titans' MQAR loss went NaN at 3e-3 (from step ~400) and at 1e-3 (from step 571), at d = 32;
# those runs stay in the store and on the page as diverged.
ARENA_LR: dict[str, list[float]] = {"titans": [1e-3, 3e-4]}


# ============================================================================ one cell
def cell_key(c: dict[str, Any]) -> str:
    """What makes two cells the same experiment (the store is searched by it on resume)."""
    keys = ("suite", "mixer", "task", "L", "kv", "d", "lr", "steps", "vocab", "n_layers",
            "batch", "eval_lengths", "mixer_kwargs", "seed", "n_train", "n_test")
    return json.dumps({k: c.get(k) for k in keys}, sort_keys=True)


def run_cell(c: dict[str, Any]) -> dict[str, Any]:
    """Train one model and test it (in the calling process); returns the metrics."""
    import torch

    import lrm
    from lra import quick
    from lra.data import recall_tasks

    torch.set_num_threads(int(c.get("threads", 1)))
    torch.manual_seed(c["seed"])
    task, L = c["task"], c["L"]
    kw: dict[str, Any] = ({"vocab_size": c["vocab"], "num_kv_pairs": c["kv"]} if task == "mqar"
                          else {})
    vocab = recall_tasks.vocab_size_of(task, **kw)
    x, y = recall_tasks.make(task, c["n_train"], L, seed=c["seed"], **kw)
    model = lrm.LRModel(lrm.ModelConfig(mixer=c["mixer"], d_model=c["d"], n_layers=c["n_layers"],
                                        vocab_size=vocab, head="lm",
                                        mixer_kwargs=c.get("mixer_kwargs") or {}))
    t0 = time.time()
    losses = quick.fit(model, x, y, steps=c["steps"], batch_size=c["batch"], lr=c["lr"],
                       seed=c["seed"])
    fit_s = time.time() - t0
    lengths = [L, *c.get("eval_lengths", [])]
    tests = recall_tasks.extrapolation_sets(task, c["n_test"], lengths,
                                            seed=10_000 + c["seed"], **kw)
    acc = {str(n): quick.accuracy(model, *tests[n], batch_size=16) for n in lengths}
    every = max(1, len(losses) // 20)
    return {
        "acc": acc[str(L)], "acc_by_length": acc,
        "params": sum(p.numel() for p in model.parameters()),
        "state_size": [int(b.mixer.state_size(L)) for b in model.blocks],
        "loss_curve": [[i + 1, round(sum(losses[i:i + every]) / len(losses[i:i + every]), 4)]
                       for i in range(0, len(losses), every)],
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "diverged_at": next((i + 1 for i, v in enumerate(losses) if not math.isfinite(v)), None),
        "fit_s": round(fit_s, 1),
    }


def _child(cell_json: str, out: str) -> None:
    res = run_cell(json.loads(cell_json))
    Path(out).write_text(json.dumps(res))


def _launch(c: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one cell in a child process; always returns a record (status ok or error)."""
    rec = {**c, "date": _dt.datetime.now().isoformat(timespec="seconds"), "status": "error",
           "error": None}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.run([sys.executable, "-m", "lra.leaderboard.arena", "--cell",
                                   json.dumps(c), "--result", str(out)], cwd=str(REPO),
                                  env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                rec["error"] = f"exit {proc.returncode}: " + " | ".join(lines[-2:])[-400:]
            elif out.is_file():
                rec.update(json.loads(out.read_text()), status="ok")
            else:
                rec["error"] = "the cell wrote no result"
        except subprocess.TimeoutExpired:
            rec["error"] = f"timeout: killed after {timeout:.0f} s"
    rec["wall_s"] = round(time.time() - t0, 1)
    return rec


# ============================================================================ the grid
def grid(spec: dict[str, Any], mixers: Sequence[str], *, steps: int | None = None,
         seed: int = 0) -> list[dict[str, Any]]:
    """Every cell of a grid spec (:data:`FULL`, :data:`QUICK`) for ``mixers``."""
    explicit_steps = steps is not None  # --steps sets every cell's count
    steps = int(steps or spec["steps"])
    # every training sequence is seen about once: no more are generated than steps x batch
    base = {"suite": "recall", "vocab": VOCAB, "n_layers": N_LAYERS, "batch": BATCH,
            "steps": steps, "seed": seed, "n_train": min(N_TRAIN, steps * BATCH),
            "n_test": spec.get("n_test", N_TEST)}

    def opts(mixer: str, d: int) -> dict[str, Any]:
        f = ARENA_KWARGS.get(mixer)
        return f(d) if f else {}

    skip = spec.get("skip", {})
    cells = []
    m = spec["mqar"]
    state = [(d, mixer, L_kv, lr) for d, mixer, L_kv in itertools.product(m["d"], mixers, m["L_kv"])
             for lr in ARENA_LR.get(mixer, m["lr"])]
    for d, mixer, (L, kv), lr in state:
        ext = [f * L for f in EXTRAP] if d == m.get("extrapolate_d") else []
        cells.append({**base, "kind": "state", "mixer": mixer, "task": "mqar", "L": L, "kv": kv,
                      "d": d, "lr": lr, "eval_lengths": ext, "mixer_kwargs": opts(mixer, d)})
        if (mixer, d) in skip:
            cells[-1]["skip"] = skip[(mixer, d)]
    e = spec["extrapolation"]
    e_steps = int(steps if explicit_steps else e.get("steps", steps))
    e_base = {**base, "steps": e_steps, "n_train": min(N_TRAIN, e_steps * BATCH)}
    for mixer, (task, L, kv) in itertools.product(mixers, e["cells"]):
        for lr in ARENA_LR.get(mixer, e["lr"])[:1]:
            cells.append({**e_base, "kind": "extrapolation", "mixer": mixer, "task": task, "L": L,
                          "kv": kv, "d": e["d"], "lr": lr,
                          "eval_lengths": [f * L for f in EXTRAP],
                          "mixer_kwargs": opts(mixer, e["d"])})
    # the order cells are run in: MQAR at the extrapolated width, then the extrapolation cells,
    # then the other widths, so a sweep stopped early still has both figures
    first = [c for c in cells if c["kind"] == "state" and c["eval_lengths"]]
    ext_cells = [c for c in cells if c["kind"] == "extrapolation"]
    return first + ext_cells + [c for c in cells if c not in first and c not in ext_cells]


def run(cells: list[dict[str, Any]], store: Path, *, jobs: int, timeout: float = TIMEOUT_S,
        command: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the cells the store does not hold yet, ``jobs`` at a time, each record saved as it
    finishes. Returns the new records."""
    done = {cell_key(r) for r in load_store(store) if r.get("status") == "ok"}
    todo = [c for c in cells if cell_key(c) not in done and not c.get("skip")]
    prov = {"commit": git_commit(), "dirty": git_dirty(), "device": device_name(),
            "grid_command": command}
    n_skip = sum(1 for c in cells if c.get("skip"))
    print(f"[recall] {len(cells)} cells, {len(cells) - len(todo) - n_skip} already in {store}, "
          f"{n_skip} left out by the grid, {len(todo)} to run, {jobs} at a time", flush=True)
    new: list[dict[str, Any]] = []
    if not todo:
        return new
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="cell", dynamic_ncols=True, desc="recall arena")
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_launch, {**c, **prov}, timeout): c for c in todo}
        for fut in cf.as_completed(futures):
            rec = fut.result()
            add_runs(store, [rec])
            new.append(rec)
            c = futures[fut]
            what = (f"acc {rec['acc']:.3f}" if rec["status"] == "ok" else rec["error"])
            msg = (f"{c['mixer']} {c['task']} L={c['L']} kv={c['kv']} d={c['d']} lr={c['lr']}: "
                   f"{what} ({rec['wall_s']:.0f} s)")
            if bar is not None:
                bar.write(msg)
                bar.update(1)
            else:
                print(msg, flush=True)
    if bar is not None:
        bar.close()
    return new


# ============================================================================ the page
def diverged(r: dict[str, Any]) -> int | None:
    """The first step whose training loss was not finite (NaN or inf), or None. Such a run's
    accuracy means nothing: it is never a best cell, and the page lists it as diverged."""
    if r.get("diverged_at"):
        return int(r["diverged_at"])
    curve = r.get("loss_curve") or []
    bad = [step for step, loss in curve if not math.isfinite(loss)]
    if bad or not math.isfinite(r.get("final_loss", 0.0)):
        return bad[0] if bad else -1
    return None


def best_lr(recs: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The best-accuracy record of each (kind, mixer, task, L, kv, d) over learning rates (the
    newest record of each exact cell counts)."""
    newest: dict[str, dict[str, Any]] = {}
    for r in recs:
        if r.get("status") == "ok" and diverged(r) is None:
            k = cell_key(r)
            if k not in newest or str(r.get("date")) >= str(newest[k].get("date")):
                newest[k] = r
    best: dict[tuple, dict[str, Any]] = {}
    for r in newest.values():
        k = (r["kind"], r["mixer"], r["task"], r["L"], r["kv"], r["d"])
        if k not in best or r["acc"] > best[k]["acc"]:
            best[k] = r
    return best


def extrapolated(best: dict[tuple, dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """{(task, L, kv, d): {mixer: record}} for every best record tested at more than its
    training length (extrapolation cells, and the MQAR cells at ``extrapolate_d``)."""
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for k, r in sorted(best.items()):
        if len(r.get("acc_by_length", {})) > 1:
            out.setdefault((k[2], k[3], k[4], k[5]), {})[k[1]] = r
    return out


def missing(cells: list[dict[str, Any]], recs: list[dict[str, Any]]) -> list[str]:
    """A line for each cell of the grid without an ok record: never run, or its last error."""
    ok = {cell_key(r) for r in recs if r.get("status") == "ok" and diverged(r) is None}
    last_err = {cell_key(r): r.get("error") for r in recs if r.get("status") != "ok"}
    for r in recs:
        step = diverged(r) if r.get("status") == "ok" else None
        if step is not None:
            at = f" from step {step}" if step > 0 else ""
            last_err[cell_key(r)] = f"diverged: the training loss was not finite{at}"
    out = []
    for c in cells:
        k = cell_key(c)
        if k not in ok:
            why = c.get("skip") or last_err.get(k) or "not run yet"
            out.append(f"{c['mixer']} {c['task']} L={c['L']} kv={c['kv']} d={c['d']} "
                       f"lr={c['lr']}: {why}")
    return out


def _fmt_state(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}K" if n >= 1e3 else str(n))


def render(recs: list[dict[str, Any]], cells: list[dict[str, Any]], *, store_name: str,
           plots: tuple[str, str], notes: str | None) -> str:
    from lra.leaderboard.render import NOTES_BEGIN, NOTES_END

    best = best_lr(recs)
    out = ["# Recall arena", "",
           f"Generated by `lra leaderboard --suite recall` (lra/leaderboard/arena.py) from "
           f"the run store `{store_name}`; never edited by hand. Each cell: a {N_LAYERS}-layer "
           f"model with an LM head, trained on generated sequences (vocabulary {VOCAB}, batch "
           f"{BATCH}, AdamW with warmup and cosine decay, one seed), scored on the recall "
           f"positions of {N_TEST} fresh test sequences. Accuracy in %, best learning rate per "
           f"cell; state size = floats per sequence summed over the layers after L tokens.",
           ""]
    state = sorted({(k[3], k[4]) for k in best if k[0] == "state"})
    mixers = sorted({k[1] for k in best})
    for L, kv in state:
        ds = sorted({k[5] for k in best if k[0] == "state" and (k[3], k[4]) == (L, kv)})
        out += [f"### MQAR, L = {L}, {kv} key-value pairs", "",
                "| mixer | " + " | ".join(f"d={d}: acc (state, lr, wall)" for d in ds) + " |",
                "|---|" + "---|" * len(ds)]
        for m in mixers:
            cells_ = []
            for d in ds:
                r = best.get(("state", m, "mqar", L, kv, d))
                cells_.append("" if r is None else
                              f"{100 * r['acc']:.1f} ({_fmt_state(sum(r['state_size']))}, "
                              f"{r['lr']:g}, {r.get('wall_s', 0) / 60:.1f} min)")
            if any(cells_):
                out.append(f"| {m} | " + " | ".join(cells_) + " |")
        out.append("")
    for (task, L, kv, d), by_mixer in extrapolated(best).items():
        rows = sorted(by_mixer.items())
        lengths = sorted({int(n) for _, r in rows for n in r["acc_by_length"]})
        what = f"MQAR, {kv} pairs" if task == "mqar" else "passkey"
        out += [f"### Extrapolation: {what}, trained at L = {L}, d = {d}", "",
                "| mixer | " + " | ".join(f"{n}" + (" (train)" if n == L else "")
                                         for n in lengths) + " |",
                "|---|" + "---|" * len(lengths)]
        for m, r in rows:
            out.append(f"| {m} | " + " | ".join(
                f"{100 * r['acc_by_length'][str(n)]:.1f}" if str(n) in r["acc_by_length"]
                else "" for n in lengths) + " |")
        out.append("")
    ok = [r for r in recs if r.get("status") == "ok" and diverged(r) is None]
    if ok:
        walls = [r["wall_s"] for r in ok if r.get("wall_s")]
        cmds = sorted({r.get("grid_command") for r in ok if r.get("grid_command")})
        commits = sorted({str(r.get("commit")) + (" + uncommitted changes" if r.get("dirty")
                                                  else "") for r in ok})
        devices = sorted({str(r.get("device")) for r in ok})
        out += ["## How these were made", "",
                "Commands: " + "; ".join(f"`{c}`" for c in cmds), "",
                f"{len(ok)} cells; wall time per cell {min(walls):.0f}–{max(walls):.0f} s, "
                f"{sum(walls) / 3600:.2f} cell-hours in all (cells ran in parallel, one torch "
                f"thread each); steps per cell: "
                f"{', '.join(str(s) for s in sorted({r['steps'] for r in ok}))}; code: "
                f"commit {', '.join(commits)}; device: {', '.join(devices)}.", ""]
    div = [r for r in recs if r.get("status") == "ok" and diverged(r) is not None]
    if div:
        out += ["## Runs that diverged", "",
                "Not counted in the tables: their training loss became NaN or inf.", ""]
        out += [f"- {r['mixer']} {r['task']} L={r['L']} kv={r['kv']} d={r['d']} lr={r['lr']:g}"
                f": loss not finite from step {diverged(r)}" for r in div]
        out.append("")
    miss = missing(cells, recs)
    out += ["## Missing cells", ""]
    if not miss:
        out += ["None: every cell of the grid has a result."]
    elif len(miss) <= 40:
        out += [f"- {m}" for m in miss]
    else:  # a long list says little: count the cells by mixer and reason
        counts: dict[tuple[str, str], int] = {}
        for m in miss:
            mixer, why = m.split(" ", 1)[0], m.split(": ", 1)[1]
            counts[(mixer, why)] = counts.get((mixer, why), 0) + 1
        out += [f"{len(miss)} of {len(cells)} cells have no result:", ""]
        out += [f"- {mixer}: {n} cells, {why}" for (mixer, why), n in sorted(counts.items())]
    out += ["", f"![accuracy against state size]({plots[0]})", "",
            f"![extrapolation]({plots[1]})", "", NOTES_BEGIN, (notes or "").strip(), NOTES_END,
            ""]
    return "\n".join(out)


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


def _save(fig, axes: list, path: Path) -> None:
    """The legend beside the panels, never over a curve; then the file."""
    import matplotlib.pyplot as plt

    fig.legend(*axes[-1].get_legend_handles_labels(), fontsize=7, loc="center right",
               frameon=False)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_state(recs: list[dict[str, Any]], path: Path) -> None:
    """Zoology-style: MQAR accuracy against state size (log x), one curve per mixer over d."""
    import matplotlib

    best = best_lr(recs)
    panels = sorted({(k[3], k[4]) for k in best if k[0] == "state"}) or [(0, 0)]
    mixers = sorted({k[1] for k in best if k[0] == "state"})
    style = _style({k[1] for k in best})
    fig, axes = _panels(len(panels), 3.6, 1.6)
    for ax, (L, kv) in zip(axes, panels, strict=True):
        for m in mixers:
            pts = sorted((sum(r["state_size"]), 100 * r["acc"]) for k, r in best.items()
                         if k[0] == "state" and k[1] == m and (k[3], k[4]) == (L, kv))
            if pts:
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


def write_outputs(store: Path, out: Path, cells: list[dict[str, Any]]) -> None:
    from lra.leaderboard.render import read_notes

    recs = load_store(store)
    p_state = out.with_name(out.stem + "_state.png")
    p_ext = out.with_name(out.stem + "_extrapolation.png")
    plot_state(recs, p_state)
    plot_extrapolation(recs, p_ext)
    text = render(recs, cells, store_name=repo_relative(store),
                  plots=(p_state.name, p_ext.name), notes=read_notes(out))
    out.write_text(text, encoding="utf-8")
    print(f"[recall] wrote {out}, {p_state} and {p_ext}", flush=True)


# ============================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lra leaderboard --suite recall",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="the smoke grid (QUICK)")
    ap.add_argument("--mixers", nargs="+", default=None, help="default: every registered mixer")
    ap.add_argument("--steps", type=int, default=None,
                    help=f"training steps per cell (default {FULL['steps']}, quick "
                         f"{QUICK['steps']})")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="cells at once, one torch thread each (default: the cores)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per cell")
    ap.add_argument("--out", default="docs/recall.md")
    ap.add_argument("--store", default=None, help="default: <out stem>_runs.json")
    ap.add_argument("--render", action="store_true", help="only rewrite the page and plots")
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--cell":
        return _child(argv[1], argv[argv.index("--result") + 1])
    args = build_parser().parse_args(argv)
    import lrm

    mixers = args.mixers or lrm.available()
    for m in mixers:
        lrm.registry.canonical(m)  # an unknown name fails here, with the valid names
    out = Path(args.out)
    store = Path(args.store) if args.store else out.with_name(out.stem + "_runs.json")
    spec = QUICK if args.quick else FULL
    cells = grid(spec, mixers, steps=args.steps)
    if not args.render:
        if args.jobs < 1:
            raise SystemExit("--jobs must be >= 1")
        run(cells, store, jobs=args.jobs, timeout=args.timeout,
            command="lra leaderboard --suite recall " + shlex.join(argv))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_outputs(store, out, cells)
    return None


if __name__ == "__main__":
    main()
