"""Claim check (Gated DeltaNet): at equal recurrent state size, the gated delta rule recalls
more key-value pairs than Mamba-2 on MQAR; softmax attention (whose KV cache grows with the
sequence) is the ceiling. Also: does GDN-2's channel-wise erase/write gating change anything?

    python scripts/claims/gdn.py              # recorded in docs/claims/gdn.md
    python scripts/claims/gdn.py --ablation   # + GDN without the delta rule (gated lin. attn.)
    python scripts/claims/gdn.py --steps 5    # a smoke run

Task: lra.data.recall_tasks.mqar (Zoology's generator: keys from the lower half of the vocabulary,
values from the upper half, queries at power-law gaps, loss only at query positions), sequence
length 64, vocabulary 64, 4 / 8 / 16 key-value pairs; 8000 training and 500 held-out sequences per
pair count. Chance is 1/32.

Models: lrm.LRModel(head="lm"), 2 layers, d_model 64, no MLP in any block (the mixers alone do
the recall), trained with lra.quick.fit (AdamW, weight decay 0.1, warmup + cosine, batch 32, the
same steps and one learning rate for every model: no sweep, unlike Zoology), scored with
lra.quick.accuracy. Equal matrix-memory size per layer:

- gdn: 1 head, K = 16, V = 32 -> 512 floats (+ 192 for the short-conv windows);
- gdn2: the same shapes with GDN-2's channel-wise decay, erase and write gates;
- mamba2: d_inner 128, d_state 4 -> 512 floats (+ conv windows);
- attention: 2 heads of 32, RoPE; its state is the KV cache, 2·d·L = 8192 floats at L = 64.

Prints a markdown table (accuracy per pair count) to stdout, progress to stderr.
"""

from __future__ import annotations

import sys
import time

from common import build_lm, mqar_split, parser, report, setup, train

import lrm
from lra.quick import accuracy

SEQ_LEN, VOCAB, D_MODEL, N_LAYERS = 64, 64, 64, 2

MODELS: dict[str, tuple[str, dict]] = {
    "attention": ("attention", {"n_heads": 2}),
    "mamba2": ("mamba2", {"d_state": 4, "expand": 2, "head_dim": 32}),
    "gdn": ("gdn", {"n_heads": 1, "head_dim": 16}),
    "gdn2": ("gdn", {"n_heads": 1, "head_dim": 16, "gates": "gdn2"}),
}
ABLATION = {"gdn (no delta rule)": ("gdn", {"n_heads": 1, "head_dim": 16, "delta_rule": False})}


def build(mixer: str, kwargs: dict, seed: int) -> lrm.LRModel:
    return build_lm(mixer=mixer, mixer_kwargs=kwargs, d=D_MODEL, layers=N_LAYERS, vocab=VOCAB,
                    seed=seed, mlp_ratio=0)


def main() -> None:
    p = parser(__doc__, out=True)
    p.add_argument("--kv", nargs="+", type=int, default=[4, 8, 16],
                   help="key-value pair counts")
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--n-train", type=int, default=8000, help="training sequences")
    p.add_argument("--n-test", type=int, default=500, help="held-out sequences")
    p.add_argument("--ablation", action="store_true", help="add GDN without the delta rule")
    args = setup(p)
    models = {**MODELS, **(ABLATION if args.ablation else {})}

    t_start = args.t_start
    acc: dict[tuple[str, int], float] = {}
    secs: dict[str, float] = {}
    info: dict[str, tuple[int, int]] = {}
    for kv in args.kv:
        x, y, xt, yt = mqar_split(args.n_train, args.n_test, SEQ_LEN, vocab=VOCAB, kv=kv,
                                  seed=args.seed)
        for label, (mixer, kw) in models.items():
            model = build(mixer, kw, args.seed)
            mix = model.blocks[0].mixer
            info[label] = (mix.state_size(SEQ_LEN), sum(q.numel() for q in model.parameters()))
            losses, took = train(model, x, y, steps=args.steps, batch_size=32, lr=args.lr,
                                 seed=args.seed)
            secs[label] = secs.get(label, 0.0) + took
            acc[label, kv] = accuracy(model, xt, yt)
            print(f"kv={kv:3d} {label:22s} acc {acc[label, kv]:.3f}  final loss "
                  f"{sum(losses[-20:]) / min(20, len(losses)):.3f}  {took:5.0f}s",
                  file=sys.stderr, flush=True)

    head = " | ".join(f"{kv} pairs" for kv in args.kv)
    lines = [f"MQAR, L={SEQ_LEN}, vocab {VOCAB}, {N_LAYERS} layers, d={D_MODEL}, {args.steps} "
             f"steps, lr {args.lr}, seed {args.seed} (accuracy on {args.n_test} held-out "
             f"sequences; chance {2 / VOCAB:.3f})\n",
             f"| model | state floats / layer (L={SEQ_LEN}) | params | {head} | train time (s) |",
             "|---|---|---|" + "---|" * len(args.kv) + "---|"]
    for label in models:
        cells = " | ".join(f"{acc[label, kv]:.3f}" for kv in args.kv)
        state, params = info[label]
        lines.append(f"| {label} | {state} | {params} | {cells} | {secs[label]:.0f} |")
    if "gdn" in models and "gdn2" in models:
        diffs = ", ".join(f"{acc['gdn2', kv] - acc['gdn', kv]:+.3f} ({kv} pairs)"
                          for kv in args.kv)
        lines.append(f"\nGDN-2 minus GDN: {diffs}")
    lines.append(f"\nwall time {time.time() - t_start:.0f} s")
    report("\n".join(lines), args)


if __name__ == "__main__":
    main()
