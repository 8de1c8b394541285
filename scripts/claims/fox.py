"""Claim check (FoX, Lin et al., ICLR 2025, §4.1 and Fig. 2): trained at one context length, the
Forgetting Transformer keeps its accuracy far beyond it, while the RoPE Transformer degrades.

    python scripts/claims/fox.py --out docs/claims/fox_run.md   # the full check (see To run)
    python scripts/claims/fox.py --smoke                        # the plumbing, in seconds

The paper measures per-token language-model loss on LongCrawl64 past a 4k training context,
far beyond a CPU. The stand-in: multi-query associative recall (``lra.data.recall_tasks.mqar``,
Zoology's generator) with 8 key-value pairs and vocabulary 256, trained at L = 64 and tested at
2L, 4L and 8L with the same number of pairs, so a longer test puts the queries further from
their keys, behind more distractor tokens. 20000 training sequences, 256 held-out sequences
per length (a test seed of its own per length).

Models: ``lrm.LRModel(head="lm")``, 2 layers, d_model 64 (one head of 64), MLP ratio 4,
``lra.quick.fit`` (AdamW, warmup + cosine, batch 64), 1000 steps (the budget at which RoPE
attention and FoX with b_f = 3 reached a training loss near zero in the first version of this
check, docs/claims/fox.md):

- fox, b_f = 0: FoX (Pro) with the authors' forget-gate bias initialisation;
- fox, b_f = 3: FoX (Pro) with the forget gates starting near 1 (sigmoid(3) = 0.95);
- fox (LLaMA), b_f = 3: FoX without the Pro block's extras (``pro=False``);
- attention + RoPE: the positive control, which must reach 0.9 at L on both seeds, and the
  baseline the claim is about;
- attention, no PE: softmax attention without positions, shown for context.

Metrics: ``acc`` (query accuracy at the training length L; the learning rate is chosen by it)
and ``acc@2L``, ``acc@4L``, ``acc@8L``. Claims, each on both seeds (margin 0.05, the gap two
seeds of one model did not show here):

- "FoX extrapolates further than RoPE attention": acc@8L of fox (b_f = 0) and of fox (b_f = 3)
  above that of attention + RoPE;
- "FoX keeps its accuracy at 8L": acc@8L of each FoX (Pro) within 0.05 of its acc at L.
"""

from __future__ import annotations

from common import (
    Check,
    Claim,
    Cmp,
    Control,
    Run,
    build_lm,
    curve_of,
    dump,
    mqar_split,
    parser,
    protocol_options,
    render,
    report,
    run_check,
    run_store,
    setup,
    train,
)

from lra.data.recall_tasks import mqar
from lra.quick import accuracy

D_MODEL, N_LAYERS, BATCH = 64, 2, 64
LRS = (1e-3, 3e-3, 1e-2)
MARGIN = 0.05

MODELS: dict[str, tuple[str, dict]] = {  # label -> (mixer, options)
    "fox, b_f = 0": ("fox", {}),
    "fox, b_f = 3": ("fox", {"fgate_bias_init": 3.0}),
    "fox (LLaMA), b_f = 3": ("fox", {"pro": False, "fgate_bias_init": 3.0}),
    "attention + RoPE": ("attention", {"rope": True}),
    "attention, no PE": ("attention", {"rope": False}),
}
CONTROL = "attention + RoPE"


def claims(models: list[str], longest: str) -> list[Claim]:
    """The claims over the models being trained; ``longest``: the metric of the longest test."""
    pro = [m for m in ("fox, b_f = 0", "fox, b_f = 3") if m in models]
    out = [Claim(f"FoX extrapolates further than RoPE attention ({longest})",
                 [Cmp((m, longest), (CONTROL, longest), MARGIN) for m in pro]),
           Claim(f"FoX keeps its accuracy ({longest} within {MARGIN} of acc at L)",
                 [Cmp((m, longest), (m, "acc"), -MARGIN) for m in pro])]
    return [c for c in out if c.parts]


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, out=True, seed=None)
    p.add_argument("--L", type=int, default=64, help="training length")
    p.add_argument("--factors", type=int, nargs="+", default=[2, 4, 8],
                   help="test lengths as multiples of L (besides L itself)")
    p.add_argument("--kv", type=int, default=8, help="key-value pairs per sequence")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size")
    p.add_argument("--steps", type=int, default=1000, help="training steps")
    p.add_argument("--n-train", type=int, default=20_000, help="training sequences")
    p.add_argument("--n-test", type=int, default=256, help="held-out sequences per length")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="the models to train (the control is always kept)")
    protocol_options(p, lrs=LRS)
    args = setup(p, argv)
    if args.smoke:
        args.steps, args.n_train, args.n_test, args.max_extend = 8, 128, 16, 0
    if any(f <= 1 for f in args.factors):
        p.error(f"--factors {args.factors}: every test length must be longer than L (L itself "
                "is always tested)")
    store = run_store(args)  # finished runs are read back: a stopped check resumes
    models = list(dict.fromkeys([CONTROL, *args.models]))
    factors = sorted(set(args.factors))
    task = dict(vocab=args.vocab, kv=args.kv)
    # per seed: training data and the held-out set at L; the longer tests, one seed per length
    data = {s: mqar_split(args.n_train, args.n_test, args.L, seed=s, **task) for s in args.seeds}
    longer = {s: {f: mqar(args.n_test, f * args.L, vocab_size=args.vocab,
                          num_kv_pairs=args.kv, seed=20_000 + 100 * s + f) for f in factors}
              for s in args.seeds}

    def run(label: str, lr: float, seed: int) -> Run:
        mixer, kw = MODELS[label]
        model = build_lm(mixer=mixer, mixer_kwargs=kw, d=D_MODEL, layers=N_LAYERS,
                         vocab=args.vocab, seed=seed)
        x, y, xt, yt = data[seed]
        losses, secs = train(model, x, y, steps=args.steps, batch_size=BATCH, lr=lr, seed=seed)
        scores = {"acc": accuracy(model, xt, yt)}
        for f in factors:
            scores[f"acc@{f}L"] = accuracy(model, *longer[seed][f])
        return Run(scores, curve_of(losses), secs)

    longest = f"acc@{factors[-1]}L"
    check = Check(f"MQAR trained at L={args.L}, tested to {factors[-1]}L", models, args.lrs, run,
                  Control(CONTROL, 0.9, why="RoPE attention within its training length"),
                  claims(models, longest), seeds=args.seeds, max_extend=args.max_extend,
                  store=store)
    res = run_check(check)
    head = (f"MQAR, {args.kv} pairs, vocab {args.vocab} (chance {2 / args.vocab:.3f}): trained "
            f"at L={args.L}, tested at L and {', '.join(f'{f}L' for f in factors)}; "
            f"{N_LAYERS} layers, d={D_MODEL}, MLP ratio 4, {args.steps} steps of {BATCH}, "
            f"{args.n_train} training / {args.n_test} held-out sequences per length")
    dump(res, args.json)
    report(head + "\n\n" + render(res), args)


if __name__ == "__main__":
    main()
