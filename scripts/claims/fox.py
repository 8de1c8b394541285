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

import time

from common import build_lm, parser, report, setup, train

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
    p = parser(__doc__, seed=None, out=True)
    p.add_argument("--L", type=int, default=64, help="training length")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="test lengths as multiples of L")
    p.add_argument("--kv", type=int, default=8, help="key-value pairs per example")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size")
    p.add_argument("--d", type=int, default=64, help="model width")
    p.add_argument("--layers", type=int, default=2, help="layers")
    p.add_argument("--steps", type=int, default=1000, help="training steps")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--n_train", type=int, default=20_000, help="training sequences")
    p.add_argument("--n_test", type=int, default=256, help="test sequences per length")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds (accuracies are averaged over them)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="models to train")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    a = setup(p)
    if a.quick:
        a.steps, a.n_train, a.n_test, a.factors = 30, 512, 32, [1, 2]

    task = dict(vocab_size=a.vocab, num_kv_pairs=a.kv)
    x_tr, y_tr = recall_tasks.mqar(a.n_train, a.L, seed=0, **task)
    tests = recall_tasks.extrapolation_sets("mqar", a.n_test, [f * a.L for f in a.factors], **task)

    rows = []
    for name in a.models:
        mixer, kw = MODELS[name]
        accs = []
        t0 = time.time()
        for seed in a.seeds:
            model = build_lm(mixer=mixer, mixer_kwargs=kw, d=a.d, layers=a.layers,
                             vocab=a.vocab, seed=seed)
            losses, _ = train(model, x_tr, y_tr, steps=a.steps, batch_size=a.batch, lr=a.lr,
                              seed=seed)
            accs.append([quick.accuracy(model, *tests[f * a.L]) for f in a.factors])
        mean = [sum(col) / len(col) for col in zip(*accs, strict=True)]
        rows.append((name, mean, losses[-1], time.time() - t0))
        print(f"# {name}: final train loss {losses[-1]:.3f}, {time.time() - t0:.0f}s",
              flush=True)

    head = " | ".join(f"{f}L = {f * a.L}" for f in a.factors)
    lines = [f"\nMQAR accuracy, trained at L = {a.L} ({a.kv} kv pairs, vocab {a.vocab}, "
             f"d {a.d}, {a.layers} layers, {a.steps} steps, seeds {a.seeds})\n",
             f"| model | {head} | final train loss | time |",
             "|---" * (len(a.factors) + 3) + "|"]
    for name, mean, loss, secs in rows:
        cells = " | ".join(f"{v:.3f}" for v in mean)
        lines.append(f"| {name} | {cells} | {loss:.3f} | {secs:.0f} s |")
    report("\n".join(lines), a)


if __name__ == "__main__":
    main()
