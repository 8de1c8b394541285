"""Claim check (Oryx, "Multi-Mixer Models"): with one layer that switches between attention and
a linear recurrence along the sequence, retrieval comes close to a Transformer with under 10%
of the tokens in attention mode; and (the reading that makes this a claim about the *modes*)
training with attention mode is what teaches the recurrence to recall.

    python scripts/claims/oryx.py --out docs/claims/oryx_run.md   # the full check (To run)
    python scripts/claims/oryx.py --task passkey --steps 1000     # on passkey
    python scripts/claims/oryx.py --smoke                         # the plumbing, in seconds

Tasks (generated): ``mqar`` (``lra.data.recall_tasks.mqar``, Zoology's generator) at L = 64,
vocabulary 64, 8 key-value pairs; ``passkey`` (``lra.data.recall_tasks.passkey``) at L = 128, 5
digits. 8000 training and 500 held-out sequences.

Models: ``lrm.LRModel(head="lm")``, 2 layers, d_model 64, no MLP (the mixers alone do the
recall), ``lra.quick.fit`` (AdamW, warmup + cosine, batch 32), 2000 steps (the budget at which
GDN and attention separate on this MQAR):

- oryx-gdn, oryx-mamba2: 2 heads, K = 16, V = 32, trained with the random schedule (each step
  draws p_attn from {0, 0.1, 0.5, 1} and places chunks of 8 tokens in attention mode);
- oryx-gdn (rec only): the same Oryx-GDN layer trained in recurrent mode only (p_attn = 0 at
  every step): the Oryx core without what attention mode could teach it;
- gdn: a plain GDN layer (2 heads, K = 16, V = 32);
- attention (2 heads of 32, RoPE): the positive control, which must reach 0.9 on both seeds.

Every Oryx model is evaluated at every attention share p in ``--p-attn`` (``rand:p:8:seed``,
three placements averaged: metrics ``acc@p``). Claims, on both seeds:

- "under 10% attention is Transformer-comparable": oryx-gdn and oryx-mamba2 at p = 0.1 within
  0.05 of attention;
- "attention mode teaches the recurrence": oryx-gdn at p = 0 above oryx-gdn (rec only) at p = 0
  by 0.05 (if the rec-only model recalls as well, the Oryx core is simply a better-trained GDN:
  the next claim);
- "the Oryx core alone beats GDN": oryx-gdn (rec only) at p = 0 above gdn by 0.05.

The learning rate is chosen by the mean accuracy over the shares (random schedule), by acc@0
(rec only), and by accuracy (the rest).
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
    parser,
    protocol_options,
    render,
    report,
    run_check,
    run_store,
    setup,
    train,
)

import lrm
from lra.data.recall_tasks import PASSKEY_VOCAB, mqar, passkey
from lra.quick import accuracy
from lrm.oryx_schedule import Schedule, use_schedule

D_MODEL, N_LAYERS, TRAIN_CHUNK = 64, 2, 8
LRS = (1e-3, 3e-3, 1e-2)
ORYX = {"head_dim": 16, "n_heads": 2, "train_p_attn": (0.0, 0.1, 0.5, 1.0),
        "train_chunk": TRAIN_CHUNK, "chunk_size": 16, "schedule": "rec"}
MODELS: dict[str, dict] = {
    "attention": {"mixer": "attention", "mixer_kwargs": {"n_heads": 2}},
    "oryx-gdn": {"mixer": "oryx", "mixer_kwargs": {**ORYX, "core": "gdn"}},
    "oryx-gdn (rec only)": {"mixer": "oryx", "mixer_kwargs": {**ORYX, "core": "gdn",
                                                               "train_p_attn": (0.0,)}},
    "oryx-mamba2": {"mixer": "oryx", "mixer_kwargs": {**ORYX, "core": "mamba2"}},
    "gdn": {"mixer": "gdn", "mixer_kwargs": {"n_heads": 2, "head_dim": 16}},
}
TASKS: dict[str, dict] = {  # make(n, seed, L, kv, vocab); kv, vocab: MQAR only
    "mqar": dict(L=64, vocab=64, kv=8,
                 make=lambda n, seed, L, kv, V: mqar(n, L, vocab_size=V, num_kv_pairs=kv,
                                                     seed=seed)),
    "passkey": dict(L=128, vocab=PASSKEY_VOCAB, kv=None,
                    make=lambda n, seed, L, kv, V: passkey(n, L, n_digits=5, seed=seed)),
}


def claims(models: list[str]) -> list[Claim]:
    out = [Claim("under 10% attention is Transformer-comparable (within 0.05 of attention)",
                 [Cmp((m, "acc@0.1"), ("attention", "acc"), -0.05)
                  for m in ("oryx-gdn", "oryx-mamba2") if m in models]),
           Claim("attention mode teaches the recurrence (random schedule against rec only, "
                 "both at p = 0)", [Cmp(("oryx-gdn", "acc@0"), ("oryx-gdn (rec only)", "acc@0"),
                                        0.05)]),
           Claim("the Oryx core alone beats a plain GDN (rec only at p = 0 against gdn)",
                 [Cmp(("oryx-gdn (rec only)", "acc@0"), ("gdn", "acc"), 0.05)])]
    return out  # run_check leaves out the claims whose models did not run


def evaluate(model: lrm.LRModel, xt, yt, L: int, shares: list[float], placements: int
             ) -> dict[str, float]:
    """acc@p for every share p (random placements averaged) and their mean ("acc")."""
    scores = {}
    for pa in shares:
        accs = []
        for s in range(1 if pa in (0.0, 1.0) else placements):
            with use_schedule(model, Schedule("rand", p=pa, n=TRAIN_CHUNK, seed=1000 + s)):
                accs.append(accuracy(model, xt, yt))
        scores[f"acc@{pa:g}"] = sum(accs) / len(accs)
    scores["acc"] = sum(scores.values()) / len(scores)
    return scores


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, out=True, seed=None)
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--n-train", type=int, default=8000, help="training sequences")
    p.add_argument("--n-test", type=int, default=500, help="held-out sequences")
    p.add_argument("--p-attn", nargs="+", type=float, default=[0, 0.05, 0.1, 0.25, 0.5, 1],
                   help="attention shares p_attn at which the Oryx models are evaluated")
    p.add_argument("--placements", type=int, default=3, help="random placements per p_attn")
    p.add_argument("--task", default="mqar", choices=list(TASKS), help="the task")
    p.add_argument("--seq-len", type=int, default=None,
                   help="sequence length (default: the task's, 64 for mqar, 128 for passkey)")
    p.add_argument("--kv", type=int, default=None,
                   help="MQAR key-value pairs (default 8; fewer than half the vocabulary)")
    p.add_argument("--vocab", type=int, default=None, help="MQAR vocabulary (default 64)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="the models to train (the control is always kept)")
    protocol_options(p, lrs=LRS)
    args = setup(p, argv)
    if args.smoke:
        args.steps, args.n_train, args.n_test, args.max_extend = 8, 128, 32, 0
        args.placements = 1
    for need in (0.0, 0.1):
        if need not in args.p_attn:
            args.p_attn.append(need)  # the claims read acc@0 and acc@0.1
    store = run_store(args)  # finished runs are read back: a stopped check resumes
    models = list(dict.fromkeys(["attention", *args.models]))
    t = TASKS[args.task]
    if (args.kv, args.vocab) != (None, None) and args.task != "mqar":
        p.error("--kv and --vocab set the MQAR task: they go with --task mqar")
    L, kv, V = args.seq_len or t["L"], args.kv or t["kv"], args.vocab or t["vocab"]
    data = {s: (*t["make"](args.n_train, s, L, kv, V),
                *t["make"](args.n_test, s + 10_000, L, kv, V)) for s in args.seeds}

    def run(label: str, lr: float, seed: int) -> Run:
        model = build_lm(d=D_MODEL, layers=N_LAYERS, vocab=V, seed=seed, mlp_ratio=0,
                         **MODELS[label])
        x, y, xt, yt = data[seed]
        losses, secs = train(model, x, y, steps=args.steps, batch_size=32, lr=lr, seed=seed)
        if MODELS[label]["mixer"] == "oryx":
            scores = evaluate(model, xt, yt, L, sorted(args.p_attn), args.placements)
        else:
            scores = {"acc": accuracy(model, xt, yt)}
        return Run(scores, curve_of(losses), secs)

    # the default task's name stays as its stored runs have it
    pairs = (f", {kv} pairs" if args.kv is not None else "") + (
        f", vocab {V}" if args.vocab is not None else "")
    check = Check(f"Oryx on {args.task}, L={L}{pairs}", models, args.lrs, run,
                  Control("attention", 0.9, why="full attention within its training length"),
                  claims(models), seeds=args.seeds, max_extend=args.max_extend, store=store,
                  select={"oryx-gdn (rec only)": "acc@0"})
    res = run_check(check)
    shown = f", {kv} pairs, vocab {V}" if kv else ""
    head = (f"{args.task}, L={L}{shown}: {N_LAYERS} layers, d={D_MODEL}, no MLP, {args.steps} "
            f"steps of 32, {args.n_train} / {args.n_test} sequences; Oryx evaluated at "
            f"p_attn {sorted(args.p_attn)} ({args.placements} random placements of "
            f"{TRAIN_CHUNK}-token chunks); \"acc\" of an Oryx model is the mean over the shares")
    dump(res, args.json)
    report(head + "\n\n" + render(res), args)


if __name__ == "__main__":
    main()
