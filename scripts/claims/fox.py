"""Claim check (FoX, Lin et al. 2025): FoX extrapolates in length, RoPE attention does not.

The paper trains at 4k tokens on LongCrawl64 and shows FoX's per-token loss staying flat far past
the training length while the RoPE Transformer's blows up. A CPU-sized stand-in: multi-query
associative recall (MQAR, Zoology) trained at L and tested at 2L, 4L and 8L with the same number of
key-value pairs (so longer tests put the queries further from their keys and add distractor
tokens). Same recipe for every model; accuracy on the query positions.

    python scripts/claims/fox.py            # prints a markdown table (~10 min on 2 CPU cores)
    python scripts/claims/fox.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import time

import torch

import lrm
from lra import quick
from lra.data import recall_tasks

MODELS = {  # name -> (mixer, options)
    "FoX (Pro), b_f = 0 (authors' init)": ("fox", {}),
    "FoX (Pro), b_f = 3": ("fox", {"fgate_bias_init": 3.0}),
    "FoX (LLaMA) = pro off, b_f = 3": ("fox", {"pro": False, "fgate_bias_init": 3.0}),
    "attention + RoPE": ("attention", {"rope": True}),
    "attention, no PE": ("attention", {"rope": False}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--L", type=int, default=64, help="training length")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--kv", type=int, default=8, help="key-value pairs per example")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n_train", type=int, default=20_000)
    p.add_argument("--n_test", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared CPU)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    a = p.parse_args()
    if a.quick:
        a.steps, a.n_train, a.n_test, a.factors = 30, 512, 32, [1, 2]
    torch.set_num_threads(a.threads)

    task = dict(vocab_size=a.vocab, num_kv_pairs=a.kv)
    x_tr, y_tr = recall_tasks.mqar(a.n_train, a.L, seed=0, **task)
    tests = recall_tasks.extrapolation_sets("mqar", a.n_test, [f * a.L for f in a.factors], **task)

    rows = []
    for name in a.models:
        mixer, kw = MODELS[name]
        accs = []
        t0 = time.time()
        for seed in a.seeds:
            torch.manual_seed(seed)
            model = lrm.LRModel(lrm.ModelConfig(
                mixer=mixer, mixer_kwargs=kw, d_model=a.d, n_layers=a.layers,
                vocab_size=a.vocab, head="lm"))
            losses = quick.fit(model, x_tr, y_tr, steps=a.steps, batch_size=a.batch, lr=a.lr,
                               seed=seed)
            accs.append([quick.accuracy(model, *tests[f * a.L]) for f in a.factors])
        mean = [sum(col) / len(col) for col in zip(*accs, strict=True)]
        rows.append((name, mean, losses[-1], time.time() - t0))
        print(f"# {name}: final train loss {losses[-1]:.3f}, {time.time() - t0:.0f}s",
              flush=True)

    head = " | ".join(f"{f}L = {f * a.L}" for f in a.factors)
    print(f"\nMQAR accuracy, trained at L = {a.L} ({a.kv} kv pairs, vocab {a.vocab}, "
          f"d {a.d}, {a.layers} layers, {a.steps} steps, seeds {a.seeds})\n")
    print(f"| model | {head} | final train loss | time |")
    print("|---" * (len(a.factors) + 3) + "|")
    for name, mean, loss, secs in rows:
        cells = " | ".join(f"{v:.3f}" for v in mean)
        print(f"| {name} | {cells} | {loss:.3f} | {secs:.0f} s |")


if __name__ == "__main__":
    main()
