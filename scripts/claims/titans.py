"""Claim check (Titans, Behrouz, Zhong & Mirrokni 2025): the neural long-term memory recalls
what lies beyond the attention window; and, as a memory on its own, it recalls at least as well
as Gated DeltaNet at equal memory size.

    python scripts/claims/titans.py --out docs/claims/titans_run.md   # both parts (To run)
    python scripts/claims/titans.py --part window                     # part 1 only
    python scripts/claims/titans.py --smoke                           # the plumbing, in seconds

Part 1, beyond the window. MQAR (``lra.data.recall_tasks.mqar``) at L = 128, vocabulary 64, 8
key-value pairs (the 16-token context first, then queries at power-law gaps), with attention
windows of w = 8 tokens: a query whose key lies w or more tokens back ("far", most queries) is
out of reach of the window, so sliding-window attention of that window can answer it only by
chance (1/32), while full attention (the positive control, which must reach 0.9) sees it.
Models, 2 layers of d = 64, no MLP: Titans MAG, MAL and MAC (window = segment = 8, memory heads
of 16, depth-2 memory, chunk 8, 4 persistent tokens; the memory's inner step bounded,
``max_grad_norm=3.0`` by default), the same sliding-window attention alone (Titans' ``swa``
variant: MAG/MAL's attention without the memory), and full causal attention with RoPE.
Claim: each Titans variant answers the far queries better than sliding-window attention by 0.1,
on both seeds (all three: holds; some: holds in part; none: does not hold).

Part 2, the memory alone. MQAR at L = 64, vocabulary 64, 8 pairs, d = 64: the memory layer
(``lmm``, linear: 2 heads of 16×16; MLP: 1 head, 16×16 then 16×16) against GDN (1 head,
K = 16, V = 32) at 512 memory weights per layer; full attention as the control. Claim: the
LMM (either form) recalls no worse than GDN (margin −0.02).

Both parts: ``lra.quick.fit`` (AdamW, warmup + cosine, batch 32), 2000 steps, 8000 training and
500 held-out sequences, and the protocol of ``common.py`` (a learning-rate sweep per model,
the best rate on a second seed, learning curves).
"""

from __future__ import annotations

import torch
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

from lra.quick import IGNORE, accuracy

N_LAYERS, D_MODEL, VOCAB, KV = 2, 64, 64, 8
LRS = (1e-3, 3e-3, 1e-2)


def window_models(w: int) -> dict[str, tuple[str, dict]]:
    titans = {"window": w, "segment_len": w, "chunk_size": w, "head_dim": 16,
              "n_persistent": 4}
    return {
        "attention": ("attention", {}),
        "sliding-window attention": ("titans", {**titans, "variant": "swa"}),
        "Titans MAG": ("titans", {**titans, "variant": "mag"}),
        "Titans MAL": ("titans", {**titans, "variant": "mal"}),
        "Titans MAC": ("titans", {**titans, "variant": "mac"}),
    }


MEMORY_MODELS: dict[str, tuple[str, dict]] = {
    "attention": ("attention", {}),
    "LMM, linear": ("titans", {"variant": "lmm", "depth": 1, "head_dim": 16, "n_heads": 2,
                               "chunk_size": 16}),
    "LMM, MLP": ("titans", {"variant": "lmm", "depth": 2, "head_dim": 16, "n_heads": 1,
                            "expansion": 1.0, "chunk_size": 16}),
    "GDN": ("gdn", {"n_heads": 1, "head_dim": 16}),
}


def key_distance(inputs: torch.Tensor, targets: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """For every scored position, how many tokens back its key sits in the context (the first
    ``n_ctx`` tokens); 0 elsewhere."""
    pos = torch.arange(inputs.shape[1])
    hit = inputs[:, :n_ctx, None] == inputs[:, None, :]  # (N, n_ctx, L): context j holds x_t
    first = torch.where(hit.any(1), hit.float().argmax(1), 0)  # (N, L)
    return torch.where(targets != IGNORE, pos[None, :] - first, 0)


@torch.no_grad()
def far_near_accuracy(model, inputs, targets, w: int, n_ctx: int) -> dict[str, float]:
    """Accuracy over all queries, the far ones (key w or more tokens back) and the near ones."""
    model.eval()
    pred = torch.cat([model(inputs[i:i + 64]).argmax(-1) for i in range(0, len(inputs), 64)])
    scored = targets != IGNORE
    right = (pred == targets) & scored
    far = scored & (key_distance(inputs, targets, n_ctx) >= w)
    near = scored & ~far

    def frac(mask: torch.Tensor) -> float:
        return (right & mask).sum().item() / mask.sum().item() if mask.any() else float("nan")

    return {"acc": frac(scored), "acc far": frac(far), "acc near": frac(near),
            "far share": far.sum().item() / scored.sum().item()}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, out=True, seed=None)
    p.add_argument("--part", nargs="+", default=["window", "memory"],
                   choices=["window", "memory"], help="which parts to run")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--window", type=int, default=8, help="attention window w (part 1)")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length (part 1)")
    p.add_argument("--n-train", type=int, default=8000, help="training sequences")
    p.add_argument("--n-test", type=int, default=500, help="held-out sequences")
    p.add_argument("--models", nargs="+", default=None,
                   help="train only these models of each part (the control, attention, is "
                   "always kept; a claim is judged once all its models are in); with a shared "
                   "--store, two processes can fill one check side by side")
    protocol_options(p, lrs=LRS)
    args = setup(p, argv)
    if args.smoke:
        args.steps, args.n_train, args.n_test, args.max_extend = 6, 96, 32, 0
    unknown = set(args.models or []) - set(window_models(args.window)) - set(MEMORY_MODELS)
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; choose from the parts' models: "
                f"{list(window_models(args.window))} and {list(MEMORY_MODELS)}")
    store = run_store(args)  # finished runs are read back: a stopped check resumes
    out = []
    for part in args.part:
        L = args.seq_len if part == "window" else 64
        models = window_models(args.window) if part == "window" else MEMORY_MODELS
        if args.models:
            models = {m: v for m, v in models.items() if m in args.models or m == "attention"}
        data = {s: mqar_split(args.n_train, args.n_test, L, vocab=VOCAB, kv=KV, seed=s)
                for s in args.seeds}

        def run(label: str, lr: float, seed: int, models=models, data=data, part=part) -> Run:
            mixer, kw = models[label]
            model = build_lm(mixer=mixer, mixer_kwargs=kw, d=D_MODEL, layers=N_LAYERS,
                             vocab=VOCAB, seed=seed, mlp_ratio=0)
            x, y, xt, yt = data[seed]
            losses, secs = train(model, x, y, steps=args.steps, batch_size=32, lr=lr,
                                 seed=seed)
            scores = (far_near_accuracy(model, xt, yt, args.window, 2 * KV)
                      if part == "window" else {"acc": accuracy(model, xt, yt)})
            return Run(scores, curve_of(losses), secs)

        if part == "window":
            name = (f"Part 1: MQAR beyond the window (L={L}, w={args.window}, {KV} pairs, "
                    f"d={D_MODEL}, {args.steps} steps of 32)")
            claims = [Claim(f"the memory recalls beyond the window (far queries, each Titans "
                            f"variant against sliding-window attention of w={args.window})",
                            [Cmp((v, "acc far"), ("sliding-window attention", "acc far"), 0.1)
                             for v in ("Titans MAG", "Titans MAL", "Titans MAC")])]
        else:
            name = (f"Part 2: the memory alone against GDN at 512 memory weights (MQAR L={L}, "
                    f"{KV} pairs, d={D_MODEL}, {args.steps} steps of 32)")
            claims = [Claim("the LMM recalls no worse than GDN at equal memory",
                            [Cmp((m, "acc"), ("GDN", "acc"), -0.02)
                             for m in ("LMM, linear", "LMM, MLP")])]
        check = Check(name, list(models), args.lrs, run,
                      Control("attention", 0.9, why="full attention sees every key"),
                      claims, seeds=args.seeds, max_extend=args.max_extend, store=store)
        res = run_check(check)
        out.append(render(res))
        if args.json:
            dump(res, args.json.with_name(f"{args.json.stem}-{part}.json"))
    report("\n\n".join(out), args)


if __name__ == "__main__":
    main()
