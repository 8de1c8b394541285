"""Titans MAC from its public reference code, titans-pytorch, on a recall-arena cell: does the
reference's MAC recall where lrm's stays low?

    python scripts/titans_reference.py --cell 128:8:64 --lr 3e-3
    python scripts/titans_reference.py --cell 128:8:64 --lr 1e-3 3e-3 --seeds 0 1
    python scripts/titans_reference.py --smoke          # a few steps, checks the plumbing

lrm's Titans MAC reaches 78-80% at the arena's MQAR cell (L 128, 8 pairs, d 64): every query in
the first 64-token segment is answered, one in eight of those beyond it (docs/recall.md, the
diagnoses). Whether that is lrm's memory or the method at this size is what a run of the
reference implementation on the same cell tells. Each run here is the arena's run of the cell
(``lra/leaderboard/arena.py``: the same generated data, AdamW with warmup and cosine decay,
batch, steps, seed and test) with ``titans_pytorch.MemoryAsContextTransformer`` in place of
``lrm.LRModel``, sized to match lrm's model at that width:

- width d, 2 layers, a neural memory in both (lrm's MAC has one in every block);
- attention over segments of 64 tokens with 4 persistent tokens, one attention head of width d
  below d = 128 (lrm's ``attn_heads``), and the reference's 4 long-term memory tokens per
  segment (its form of the paper's h: lrm reads one h per token instead);
- memory heads of 16 at d = 64 (lrm's K = min(32, d/4), H = d/K), the reference's default
  depth-2 MLP memory, chunking (one chunk per segment) and update rule;
- per-head learned initial memory weights (the reference expands one set over the heads, which
  the optimiser cannot update in place);
- a plain residual stream (``num_residual_streams=1``: the reference's hyper-connections are
  not in the paper), an MLP of ratio 4 (as lrm's blocks).

The reference's update has no soft clamp (lrm's default ``max_grad_norm = 3``), a LayerNorm and
residual around the memory MLP (lrm's ``memory_norm_residual``, off by default) and per-token
learned step sizes of its own form; those differences are what a gap between the two would
point at. Every finished run goes into a run store (default
``docs/recall_reference_runs.json``, the arena's store format; a rerun of the same run reads it
back), and a run in flight checkpoints every 250 steps under ``runs/recall_checkpoints/`` (or
``LRA_RECALL_CHECKPOINTS``; a killed run resumes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lra import quick
from lra.data import recall_tasks
from lra.leaderboard import arena
from lra.leaderboard.store import add_runs, checkpoint_file, device_name, load_store

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "docs" / "recall_reference_runs.json"


def reference_config(d: int, memory_layers: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """titans-pytorch's MAC transformer settings that match lrm's MAC model at width ``d``;
    ``memory_layers=()`` leaves the neural memory out (the reference's segmented attention
    alone, a control for its attention stack)."""
    head = min(32, d // 4)  # lrm's memory head width K
    return {"dim": d, "depth": 2, "segment_len": 64, "num_persist_mem_tokens": 4,
            "num_longterm_mem_tokens": 4, "heads": max(1, d // 64), "dim_head": min(d, 64),
            "ff_mult": 4, "num_residual_streams": 1, "neural_memory_layers": memory_layers,
            "neural_memory_kwargs": {"dim_head": head, "heads": d // head}}


def build_reference(vocab: int, config: dict[str, Any]) -> torch.nn.Module:
    try:
        from titans_pytorch import MemoryAsContextTransformer
    except ImportError as e:
        raise SystemExit("this script needs titans-pytorch: pip install -e '.[dev]' (it pins "
                         "titans-pytorch==0.5.5)") from e
    model = MemoryAsContextTransformer(num_tokens=vocab, **config)
    # The reference's memory heads start from one set of initial weights, a parameter expanded
    # over the heads (stride 0), which AdamW's in-place updates refuse or write several times
    # over; each head gets its own copy, learned separately (as in lrm).
    for p in model.parameters():
        if 0 in p.stride():
            p.data = p.data.contiguous()
    return model


def run_key(run: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(run, sort_keys=True).encode()).hexdigest()[:20]


def train(run: dict[str, Any], *, threads: int, log_every: int) -> dict[str, Any]:
    """One run of the cell with the reference model; returns its metrics."""
    torch.set_num_threads(threads)
    torch.manual_seed(run["seed"])
    kw = {"vocab_size": run["vocab"], "num_kv_pairs": run["kv"]}
    vocab = recall_tasks.vocab_size_of("mqar", **kw)
    x, y = recall_tasks.make("mqar", run["n_train"], run["L"], seed=run["seed"], **kw)
    model = build_reference(vocab, run["config"])
    ckpt = checkpoint_file(run_key(run), arena.CHECKPOINTS, "LRA_RECALL_CHECKPOINTS",
                           stem="reference-")
    losses = quick.fit(model, x, y, steps=run["steps"], batch_size=run["batch"], lr=run["lr"],
                       seed=run["seed"], checkpoint=ckpt, log_every=log_every)
    xt, yt = recall_tasks.make("mqar", run["n_test"], run["L"], seed=10_000 + run["seed"], **kw)
    return {
        "acc": quick.accuracy(model, xt, yt, batch_size=16),
        "acc_by_position": quick.accuracy_by_position(model, xt, yt, n_bins=4, batch_size=16),
        "params": sum(p.numel() for p in model.parameters()),
        "loss_curve": arena.loss_curve(losses),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "skipped_steps": losses.skipped_steps,
        "fit_s": round(losses.elapsed_s, 1),
        **({"resumed_at_step": losses.resumed_at} if losses.resumed_at else {}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--cell", default="128:8:64", help="L:pairs:d of an MQAR cell")
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-3], help="learning rates")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds")
    ap.add_argument("--steps", type=int, default=None,
                    help="default: the arena's step count for titans at this cell")
    ap.add_argument("--memory-layers", type=int, nargs="*", default=[1, 2],
                    help="the layers (1-based) with a neural memory; none: attention alone")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--store", type=Path, default=STORE, help="the run store (JSON)")
    ap.add_argument("--log-every", type=int, default=250, help="print the loss every N steps")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps; no store")
    a = ap.parse_args(argv)
    try:
        L, kv, d = (int(v) for v in a.cell.split(":"))
    except ValueError:
        raise SystemExit(f"--cell takes L:pairs:d, e.g. 128:8:64; got {a.cell!r}") from None
    steps = a.steps or arena.steps_for("titans", (L, kv, d))[0]
    n_train, n_test = arena.n_train_for(steps, arena.BATCH), arena.N_TEST
    if a.smoke:
        L, kv, d, steps, n_train, n_test = 128, 8, 32, 3, 64, 16
    from importlib.metadata import version
    stored = {} if a.smoke else {r["key"]: r for r in load_store(a.store)}
    for lr in a.lr:
        for seed in a.seeds:
            name = "MAC" if a.memory_layers else "MAC without memory"
            run = {"model": f"titans-pytorch {version('titans-pytorch')} {name}", "task": "mqar",
                   "L": L, "kv": kv, "d": d, "vocab": arena.VOCAB, "batch": arena.BATCH,
                   "n_train": n_train, "n_test": n_test, "steps": steps, "lr": lr,
                   "seed": seed, "config": reference_config(d, tuple(a.memory_layers))}
            key = run_key(run)
            label = f"{run['model']} L={L} kv={kv} d={d} lr={lr:g} seed={seed}, {steps} steps"
            if key in stored:
                r = stored[key]
                print(f"{label}: acc {r['acc']:.3f} (from the store)")
                continue
            t0 = time.time()
            res = train(run, threads=a.threads, log_every=a.log_every)
            by_pos = " / ".join(f"{v:.2f}" for v in res["acc_by_position"])
            print(f"{label}: acc {res['acc']:.3f}, by quarter {by_pos}, final loss "
                  f"{res['final_loss']:.3f}, {res['params']} parameters, {time.time() - t0:.0f} s",
                  flush=True)
            if not a.smoke:
                add_runs(a.store, [{"key": key, **run, **res, "device": device_name()}])


if __name__ == "__main__":
    main()
