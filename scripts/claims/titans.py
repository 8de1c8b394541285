"""Claim check (Titans, Behrouz, Zhong & Mirrokni 2025): the neural memory recalls beyond the
attention window.

    python scripts/claims/titans.py              # recorded in docs/claims/titans.md
    python scripts/claims/titans.py --steps 5    # a smoke run

Part 1, passkey (lra.data.recall_tasks.passkey: a 5-digit key hidden at a uniformly random depth
in a repeated filler sentence, asked for at the end; teacher-forced digits, chance 0.1) at L = 256
with attention windows of w = 32 tokens (L = 8w). The KEY token lies outside the last query's
window in ~85% of the examples; accuracy is reported separately for those ("beyond w") and the
others. Models, 2 layers of d = 32 with no MLP (memory heads of 16): Titans MAG, MAL, MAC
(w = segment = 32), the same sliding-window attention alone (Titans' ``swa`` variant: the
MAG/MAL attention without the memory), and full causal attention with RoPE.

Part 2, MQAR (lra.data.recall_tasks.mqar, L = 64, vocabulary 64, 8 key-value pairs, d = 32) with the
memory alone (``lmm``) against Gated DeltaNet at equal memory: 512 weights per layer (LMM
linear: 2 heads of 16×16; LMM MLP: 1 head, 16×16 then 16×16; GDN: 1 head, K = 16, V = 32).

One seed, one learning rate, no sweep; the losses along training are printed as learning
curves (mean loss per tenth of the run).
"""

from __future__ import annotations

import sys
import time

import torch
from common import build_lm, mqar_split, parser, setup, train

import lrm
from lra.data.recall_tasks import PASSKEY_KEY, PASSKEY_VOCAB, passkey
from lra.quick import accuracy

N_LAYERS = 2
W = 32
TITANS = {"window": W, "segment_len": W, "chunk_size": 16, "head_dim": 16, "n_persistent": 4}
PASSKEY_MODELS: dict[str, tuple[str, dict]] = {
    "sliding-window attention (w=32)": ("titans", {**TITANS, "variant": "swa"}),
    "full attention": ("attention", {}),
    "Titans MAG": ("titans", {**TITANS, "variant": "mag"}),
    "Titans MAL": ("titans", {**TITANS, "variant": "mal"}),
    "Titans MAC": ("titans", {**TITANS, "variant": "mac"}),
}
MQAR_MODELS: dict[str, tuple[str, dict]] = {
    "LMM, linear (2 heads 16x16)": ("titans", {"variant": "lmm", "depth": 1, "head_dim": 16,
                                               "n_heads": 2, "chunk_size": 16}),
    "LMM, MLP (1 head 16x16x16)": ("titans", {"variant": "lmm", "depth": 2, "head_dim": 16,
                                              "n_heads": 1, "expansion": 1.0,
                                              "chunk_size": 16}),
    "GDN (1 head, K=16, V=32)": ("gdn", {"n_heads": 1, "head_dim": 16}),
}


def build(mixer: str, kwargs: dict, vocab: int, seed: int, d: int) -> lrm.LRModel:
    return build_lm(mixer=mixer, mixer_kwargs=kwargs, d=d, layers=N_LAYERS, vocab=vocab,
                    seed=seed, mlp_ratio=0)


@torch.no_grad()
def passkey_accuracy(model, inputs, targets, seq_len: int) -> tuple[float, float]:
    """Digit accuracy of examples whose KEY lies beyond the first answer position's window,
    and of the others."""
    model.eval()
    logits = torch.cat([model(inputs[i:i + 64]) for i in range(0, len(inputs), 64)])
    mask = targets != -100
    right = ((logits.argmax(-1) == targets) & mask).sum(1) / mask.sum(1)
    key_pos = (inputs == PASSKEY_KEY).float().argmax(1)
    query_pos = seq_len - 5  # QUERY, then the first 4 digits
    far = key_pos < query_pos - W + 1  # KEY outside the window of the QUERY token
    return right[far].mean().item(), right[~far].mean().item() if (~far).any() else float("nan")


def curve(losses: list[float], parts: int = 10) -> str:
    n = max(1, len(losses) // parts)
    return " ".join(f"{sum(losses[i:i + n]) / len(losses[i:i + n]):.2f}"
                    for i in range(0, len(losses), n))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=200, help="passkey training steps")
    p.add_argument("--batch", type=int, default=8, help="passkey batch size")
    p.add_argument("--d", type=int, default=32, help="model width")
    p.add_argument("--mqar-steps", type=int, default=200, help="MQAR training steps")
    p.add_argument("--seq-len", type=int, default=256, help="passkey sequence length")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    args = setup(p)
    t_start = args.t_start
    L = args.seq_len

    x, y = passkey(4000, L, seed=args.seed)
    xt, yt = passkey(300, L, seed=args.seed + 10_000)
    rows, curves = [], []
    for label, (mixer, kw) in PASSKEY_MODELS.items():
        model = build(mixer, kw, PASSKEY_VOCAB, args.seed, args.d)
        params = sum(q.numel() for q in model.parameters())
        losses, secs = train(model, x, y, steps=args.steps, batch_size=args.batch, lr=args.lr,
                             seed=args.seed)
        far, near = passkey_accuracy(model, xt, yt, L)
        rows.append(f"| {label} | {params} | {far:.3f} | {near:.3f} | {secs:.0f} |")
        curves.append(f"| {label} | {curve(losses)} |")
        print(f"passkey {label:34s} far {far:.3f} near {near:.3f} {secs:5.0f}s",
              file=sys.stderr, flush=True)

    print(f"## Passkey, L={L}, window {W}, {N_LAYERS} layers, d={args.d}, no MLP, "
          f"{args.steps} steps of {args.batch}, lr {args.lr}, seed {args.seed}\n")
    print("| model | params | digit acc., KEY beyond w | digit acc., KEY within w | "
          "train time (s) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nLearning curves (mean training loss per tenth of the run):\n")
    print("| model | loss |\n|---|---|")
    print("\n".join(curves))

    kv, Lm, vocab = 8, 64, 64
    x, y, xt, yt = mqar_split(8000, 500, Lm, vocab=vocab, kv=kv, seed=args.seed)
    rows, curves = [], []
    for label, (mixer, kw) in MQAR_MODELS.items():
        model = build(mixer, kw, vocab, args.seed, args.d)
        mix = model.blocks[0].mixer
        mem = (mix.memory.memory_size() if mixer == "titans"
               else mix.n_heads * mix.head_k_dim * mix.head_v_dim)
        losses, secs = train(model, x, y, steps=args.mqar_steps, batch_size=16, lr=args.lr,
                             seed=args.seed)
        acc = accuracy(model, xt, yt)
        rows.append(f"| {label} | {mem} | {mix.state_size(Lm)} | "
                    f"{sum(q.numel() for q in model.parameters())} | {acc:.3f} | {secs:.0f} |")
        curves.append(f"| {label} | {curve(losses)} |")
        print(f"mqar {label:34s} acc {acc:.3f} {secs:5.0f}s", file=sys.stderr, flush=True)
    print(f"\n## MQAR, L={Lm}, vocab {vocab}, {kv} pairs, {N_LAYERS} layers, d={args.d}, "
          f"{args.mqar_steps} steps of 16, lr {args.lr} (chance {2 / vocab:.3f})\n")
    print("| model | memory weights / layer | state floats / layer (L=64) | params | accuracy "
          "| train time (s) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nLearning curves:\n\n| model | loss |\n|---|---|")
    print("\n".join(curves))
    print(f"\nwall time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
