"""Claim check: LongMamba (Ye et al., ICLR 2025) enlarges Mamba's receptive field without
training, so a model trained at a short length retrieves from much longer inputs.

    python scripts/claims/longmamba.py            # the recorded run (about 10 min on 2 CPU cores)
    python scripts/claims/longmamba.py --quick    # a smoke run (about 1 min)

Protocol (everything seeded):
1. Train a small Mamba-2 LM (d_model 64, 2 layers, d_state 16, head_dim 16) on passkey retrieval
   (``lra.data.recall_tasks.passkey``, one digit hidden at a random depth in repeated filler, asked
   at the end) with ``lra.quick.fit``. A 1-digit passkey at L=256 does not take off from scratch in
   a CPU budget, so the lengths grow 32 -> 64 -> 128 -> 256; the last and longest stage sets the
   training length T_tr = 256.
2. Calibrate LongMamba on 32 fresh passkey inputs of length 256 (``lrm.longmamba.calibrate``,
   defaults: channel threshold 0.05, top-10% clamp, mean over samples).
3. Evaluate the passkey accuracy (the digit predicted at the query) on fresh inputs at 256, 1K,
   2K, 4K and 8K, with the filter (default) and without it (``lrm.longmamba.disabled``).

Prints a markdown table (accuracy ± binomial standard error) and the global heads per layer.
"""

from __future__ import annotations

import math
import time

import torch
from common import parser, setup

import lrm
import lrm.longmamba as lm
from lra import quick
from lra.data import recall_tasks


def build(mixer: str) -> lrm.LRModel:
    kw = {"d_state": 16, "longmamba": True}
    if mixer == "mamba2":
        kw.update(head_dim=16, chunk_size=64)
    return lrm.LRModel(lrm.ModelConfig(mixer=mixer, d_model=64, n_layers=2, head="lm",
                                       vocab_size=recall_tasks.PASSKEY_VOCAB, mixer_kwargs=kw))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--mixer", default="mamba2", choices=["mamba2", "mamba"], help="the model")
    p.add_argument("--train-len", type=int, default=256, help="training length T_tr")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                   help="evaluation lengths beyond T_tr")
    p.add_argument("--n-eval", type=int, default=100, help="test inputs per length")
    p.add_argument("--quick", action="store_true", help="tiny smoke run, not a result")
    args = setup(p)
    if args.quick:
        args.lengths, args.n_eval = [512, 1024], 16
    t0 = args.t_start

    torch.manual_seed(args.seed)
    model = build(args.mixer)
    T = args.train_len
    stages = [(T // 8, 150), (T // 4, 150), (T // 2, 150), (T, 250)]
    if args.quick:
        stages = [(T // 8, 40), (T, 10)]
    for i, (L, steps) in enumerate(stages):
        X, Y = recall_tasks.passkey(8192, L, n_digits=1, seed=args.seed + 100 * i)
        losses = quick.fit(model, X, Y, steps=steps, batch_size=32, lr=5e-3, seed=args.seed + i)
        print(f"trained {steps} steps at L={L}: final loss {losses[-1]:.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)

    Xc, _ = recall_tasks.passkey(32, T, n_digits=1, seed=args.seed + 7)
    lm.calibrate(model, [Xc], train_len=T)
    heads = ", ".join(f"{r['global']}/{r['channels']}" for r in lm.summary(model))

    rows = []
    for i, L in enumerate([T, *args.lengths]):
        X, Y = recall_tasks.passkey(args.n_eval, L, n_digits=1, seed=args.seed + 10_000 + i)
        with lm.disabled(model):
            vanilla = quick.accuracy(model, X, Y, batch_size=16)
        filtered = quick.accuracy(model, X, Y, batch_size=16)
        rows.append((L, vanilla, filtered))
        print(f"L={L}: vanilla {vanilla:.3f}, LongMamba {filtered:.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)

    def fmt(acc: float) -> str:
        return f"{acc:.2f} ± {math.sqrt(acc * (1 - acc) / args.n_eval):.2f}"

    print()
    print(f"Passkey (1 digit) accuracy of a {args.mixer} LM trained at L={T}; "
          f"{args.n_eval} test inputs per length; seed {args.seed}. "
          f"Global heads per layer (score > 0.05): {heads}.")
    print()
    print("| L | L / T_tr | vanilla | LongMamba |")
    print("|---|---|---|---|")
    for L, vanilla, filtered in rows:
        print(f"| {L} | {L / T:g} | {fmt(vanilla)} | {fmt(filtered)} |")
    print()
    print(f"wall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
