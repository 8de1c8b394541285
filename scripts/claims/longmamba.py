"""Claim check: LongMamba (Ye et al., ICLR 2025) enlarges Mamba's receptive field without
training, so a model trained at a short length retrieves from much longer inputs.

    python scripts/claims/longmamba.py --out docs/claims/longmamba_run.md   # see To run
    python scripts/claims/longmamba.py --smoke                              # the plumbing

Each run (everything follows its seed):

1. Train a small Mamba-2 LM (d_model 64, 2 layers, d_state 16, head_dim 16) on passkey retrieval
   (``lra.data.recall_tasks.passkey``, one digit hidden at a random depth in repeated filler,
   or with ``--filler random`` filler drawn token by token, asked at the end) with
   ``lra.quick.fit`` (batch 32). A 1-digit passkey at L=256 does not take off from scratch in
   a CPU budget, so the lengths grow 32 -> 64 -> 128 -> 256 (150, 150, 150 and 250 steps);
   the last and longest stage sets the training length T_tr = 256.
2. Calibrate LongMamba on 32 fresh passkey inputs of length 256 (``lrm.longmamba.calibrate``,
   defaults: channel threshold 0.05, top-10% clamp, mean over samples).
3. Evaluate the passkey accuracy (the digit predicted at the query) on fresh inputs at 256, 1K,
   2K, 4K and 8K, without the filter (``lrm.longmamba.disabled``: metrics ``van@L``) and with it
   (``lm@L``).

The protocol of ``common.py``, over the training rate (2e-3, 5e-3, 1.2e-2 around the first
version's 5e-3; extended at an end), chosen by the mean accuracy *without* the filter over all
lengths (so the choice does not favour the filter), the best rate re-run on a second seed. The
control: the trained model at its training length (``van@256``) must reach 0.9 on both seeds.
Claim, on both seeds: with the filter, accuracy at the longest length above that without it
by 0.05.
"""

from __future__ import annotations

import torch
from common import (
    Check,
    Claim,
    Cmp,
    Control,
    Run,
    curve_of,
    dump,
    parser,
    protocol_options,
    render,
    report,
    run_check,
    run_store,
    setup,
)

import lrm
import lrm.longmamba as lm
from lra import quick
from lra.data import recall_tasks

LRS = (2e-3, 5e-3, 1.2e-2)
MARGIN = 0.05


def build(mixer: str) -> lrm.LRModel:
    kw = {"d_state": 16, "longmamba": True}
    if mixer == "mamba2":
        kw.update(head_dim=16, chunk_size=64)
    return lrm.LRModel(lrm.ModelConfig(mixer=mixer, d_model=64, n_layers=2, head="lm",
                                       vocab_size=recall_tasks.PASSKEY_VOCAB, mixer_kwargs=kw))


def curriculum(T: int) -> list[tuple[int, int]]:
    """The training stages (length, steps) that end at the training length T."""
    return [(T // 8, 150), (T // 4, 150), (T // 2, 150), (T, 250)]


def train_calibrated(label: str, lr: float, seed: int, stages: list[tuple[int, int]],
                     T: int, filler: str = "repeat") -> tuple[lrm.LRModel, list[float]]:
    """Step 1 and 2 of a run: the model trained through ``stages``, then calibrated at T;
    returns it with its training losses."""
    torch.manual_seed(seed)
    model = build(label)
    losses: list[float] = []
    for i, (L, steps) in enumerate(stages):
        X, Y = recall_tasks.passkey(8192, L, n_digits=1, seed=seed + 100 * i, filler=filler)
        losses += quick.fit(model, X, Y, steps=steps, batch_size=32, lr=lr, seed=seed + i)
    Xc, _ = recall_tasks.passkey(32, T, n_digits=1, seed=seed + 7, filler=filler)
    lm.calibrate(model, [Xc], train_len=T)
    return model, losses


def held_out(n: int, L: int, seed: int, index: int,
                filler: str = "repeat") -> tuple[torch.Tensor, torch.Tensor]:
    """The test passkeys at length L, the ``index``-th of the run's lengths [T, ...]."""
    return recall_tasks.passkey(n, L, n_digits=1, seed=seed + 10_000 + index, filler=filler)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, out=True, seed=None)
    p.add_argument("--mixer", default="mamba2", choices=["mamba2", "mamba"], help="the model")
    p.add_argument("--train-len", type=int, default=256, help="training length T_tr")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                   help="evaluation lengths beyond T_tr")
    p.add_argument("--n-eval", type=int, default=100, help="test inputs per length")
    p.add_argument("--filler", choices=["repeat", "random"], default=None,
                   help="the passkey's filler for training, calibration and test: the papers' "
                        "repeated sentence (the default), or its tokens drawn at random")
    protocol_options(p, lrs=LRS)
    args = setup(p, argv)
    T = args.train_len
    stages = curriculum(T)
    if args.smoke:
        args.lengths, args.n_eval, args.max_extend = [2 * T], 8, 0
        stages = [(T // 8, 4), (T, 2)]
    if any(L <= T for L in args.lengths):
        p.error(f"--lengths {args.lengths}: every evaluation length must exceed --train-len {T}")
    store = run_store(args)  # finished runs are read back: a stopped check resumes
    filler = args.filler or "repeat"  # None keeps the run-store keys of the default
    lengths = [T, *sorted(set(args.lengths))]

    def run(label: str, lr: float, seed: int) -> Run:
        model, losses = train_calibrated(label, lr, seed, stages, T, filler)
        scores = {}
        for i, L in enumerate(lengths):
            X, Y = held_out(args.n_eval, L, seed, i, filler)
            with lm.disabled(model):
                scores[f"van@{L}"] = quick.accuracy(model, X, Y, batch_size=16)
            scores[f"lm@{L}"] = quick.accuracy(model, X, Y, batch_size=16)
        scores["van"] = sum(scores[f"van@{L}"] for L in lengths) / len(lengths)
        scores["global heads"] = sum(r["global"] for r in lm.summary(model))
        return Run(scores, curve_of(losses), 0.0)

    longest = lengths[-1]
    claim = Claim(f"the filter raises accuracy at {longest} = {longest // T}x T_tr",
                  [Cmp((args.mixer, f"lm@{longest}"), (args.mixer, f"van@{longest}"), MARGIN)])
    check = Check(f"passkey trained to T_tr={T}, tested to {longest}", [args.mixer], args.lrs,
                  run, Control(args.mixer, 0.9, metric=f"van@{T}",
                               why="the trained model at its training length"),
                  [claim], seeds=args.seeds, max_extend=args.max_extend, store=store,
                  metric="van")
    res = run_check(check)
    head = (f"Passkey (1 digit, chance 0.10, {filler} filler), {args.mixer} LM trained with "
            f"the length curriculum "
            f"{' -> '.join(str(L) for L, _ in stages)} ({' + '.join(str(s) for _, s in stages)}"
            f" steps of 32); {args.n_eval} test inputs per length; van@L without the filter, "
            f"lm@L with it; \"van\" (the rate's criterion) is the mean of van@L over the "
            f"lengths; \"global heads\" counts the heads the calibration marked global over "
            f"both layers")
    dump(res, args.json)
    report(head + "\n\n" + render(res), args)


if __name__ == "__main__":
    main()
