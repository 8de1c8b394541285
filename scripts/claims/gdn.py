"""Claim check (Gated DeltaNet, Yang, Kautz & Hatamizadeh, ICLR 2025): at equal matrix state,
the gated delta rule recalls more key-value pairs than Mamba-2's update on MQAR, and the delta
rule is what makes the difference; GDN-2's channel-wise gates (erase, write, decay) help
multi-key recall further.

    python scripts/claims/gdn.py --out docs/claims/gdn_run.md    # the full check (see To run)
    python scripts/claims/gdn.py --smoke                         # the plumbing, in seconds

Task: ``lra.data.recall_tasks.mqar`` (Zoology's generator: keys from the lower half of the
vocabulary, values from the upper half, queries at power-law gaps, loss only at query
positions) at L = 64, vocabulary 64, 8 key-value pairs (``--kv`` adds counts; each count is
its own check), 8000 training and 500 held-out sequences. Chance is 2/vocabulary (1/32).
``--seq-len`` and ``--vocab`` make the task harder at the same matrix state (longer inputs, more
distinct keys and values), for when every model reaches the ceiling at the default size.

Models: ``lrm.LRModel(head="lm")``, 2 layers, d_model 64, no MLP in any block (the mixers alone
do the recall), ``lra.quick.fit`` (AdamW, warmup + cosine, batch 32), 2000 steps: the budget at
which this task separates the recurrent mixers (a GDN of this size reaches 0.98 there, while at
600 steps every recurrent mixer was still learning). Equal matrix state per layer, 1024 floats:

- gdn: 2 heads, K = 16, V = 32;
- gdn (no delta rule): the same layer writing additively (gated linear attention: Mamba-2's
  update, a scalar decay and an outer-product write, inside GDN's layer);
- gdn2: GDN with GDN-2's channel-wise decay, erase and write gates;
- mamba2: d_inner 128, d_state 8;
- attention (2 heads of 32, RoPE; its KV cache grows with L): the positive control, which must
  reach 0.9 on both seeds.

The protocol of ``common.py``: a learning-rate sweep per model (1e-3, 3e-3, 1e-2, extended at
an end), the best rate re-run on a second seed, verdicts that must hold on both seeds.
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

from lra.quick import accuracy

SEQ_LEN, VOCAB, D_MODEL, N_LAYERS = 64, 64, 64, 2
LRS = (1e-3, 3e-3, 1e-2)

MODELS: dict[str, tuple[str, dict]] = {
    "attention": ("attention", {"n_heads": 2}),
    "mamba2": ("mamba2", {"d_state": 8, "expand": 2, "head_dim": 32}),
    "gdn": ("gdn", {"n_heads": 2, "head_dim": 16}),
    "gdn (no delta rule)": ("gdn", {"n_heads": 2, "head_dim": 16, "delta_rule": False}),
    "gdn2": ("gdn", {"n_heads": 2, "head_dim": 16, "gates": "gdn2"}),
}
MARGIN = 0.05  # an accuracy gap that two seeds of one model do not show by chance here

CLAIMS = [
    Claim("GDN recalls more than Mamba-2 at equal matrix state",
          [Cmp(("gdn", "acc"), ("mamba2", "acc"), MARGIN)]),
    Claim("the delta rule is what helps (GDN against the same layer without it)",
          [Cmp(("gdn", "acc"), ("gdn (no delta rule)", "acc"), MARGIN)]),
    Claim("GDN-2's gates recall more than GDN's", [Cmp(("gdn2", "acc"), ("gdn", "acc"), 0.02)]),
]


def state_floats(mixer: str, kw: dict, seq_len: int = SEQ_LEN) -> int:
    """Matrix state of one layer (without the short-convolution windows)."""
    m = build_lm(mixer=mixer, mixer_kwargs=kw, d=D_MODEL, layers=1, vocab=VOCAB, seed=0,
                 mlp_ratio=0).blocks[0].mixer
    if mixer == "mamba2":
        return m.d_inner * m.d_state
    if mixer == "gdn":
        return m.n_heads * m.head_k_dim * m.head_v_dim
    return m.state_size(seq_len)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, out=True, seed=None)
    p.add_argument("--kv", nargs="+", type=int, default=[8], help="key-value pair counts")
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"MQAR sequence length (default {SEQ_LEN})")
    p.add_argument("--vocab", type=int, default=None,
                   help=f"MQAR vocabulary (default {VOCAB})")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--n-train", type=int, default=8000, help="training sequences")
    p.add_argument("--n-test", type=int, default=500, help="held-out sequences")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                   help="the models to train (the control is always kept)")
    protocol_options(p, lrs=LRS)
    args = setup(p, argv)
    L, V = args.seq_len or SEQ_LEN, args.vocab or VOCAB
    if args.smoke:
        args.steps, args.n_train, args.n_test, args.max_extend = 8, 128, 32, 0
    store = run_store(args)  # finished runs are read back: a stopped check resumes
    models = {m: MODELS[m] for m in args.models}
    if "attention" not in models:
        models = {"attention": MODELS["attention"], **models}
    sizes = {label: state_floats(*spec, L) for label, spec in models.items()
             if label != "attention"}
    parts = [f"MQAR, L={L}, vocab {V}, {N_LAYERS} layers, d={D_MODEL}, no MLP, "
             f"{args.steps} steps of 32, {args.n_train} training / {args.n_test} held-out "
             f"sequences (chance {2 / V:.3f}); matrix state per layer: "
             + ", ".join(f"{k} {v}" for k, v in sizes.items())]
    for kv in args.kv:
        data = {s: mqar_split(args.n_train, args.n_test, L, vocab=V, kv=kv, seed=s)
                for s in args.seeds}

        def run(label: str, lr: float, seed: int, kv=kv, data=data) -> Run:
            mixer, kw = models[label]
            model = build_lm(mixer=mixer, mixer_kwargs=kw, d=D_MODEL, layers=N_LAYERS,
                             vocab=V, seed=seed, mlp_ratio=0)
            x, y, xt, yt = data[seed]
            losses, secs = train(model, x, y, steps=args.steps, batch_size=32, lr=lr, seed=seed)
            return Run({"acc": accuracy(model, xt, yt)}, curve_of(losses), secs)

        # the default size keeps the name its stored runs were written under
        size = "" if (L, V) == (SEQ_LEN, VOCAB) else f", L {L}, vocab {V}"
        check = Check(f"MQAR with {kv} pairs{size}", list(models), args.lrs, run,
                      Control("attention", 0.9, why="full attention within its training length"),
                      CLAIMS, seeds=args.seeds, max_extend=args.max_extend, store=store)
        res = run_check(check)
        parts.append(render(res))
        if args.json:
            dump(res, args.json.with_name(f"{args.json.stem}-kv{kv}.json"))
    report("\n\n".join(parts), args)


if __name__ == "__main__":
    main()
