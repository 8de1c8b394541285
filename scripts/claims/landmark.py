"""Claim check (landmark attention, Mohtashami & Jaggi 2023): top-k landmark retrieval reaches a
passkey far beyond the training length while attending to a few blocks per query.

    python scripts/claims/landmark.py --out docs/claims/landmark_run.md   # see To run
    python scripts/claims/landmark.py --smoke                             # the plumbing

The paper fine-tunes LLaMA-7B with landmarks and retrieves a passkey up to 32k tokens with k = 4
blocks of 50 tokens. A CPU-sized stand-in: the passkey task (``lra.data.recall_tasks.passkey``: a
5-digit key at a random depth in repeated filler, asked for at the end, teacher-forced; chance
0.1 per digit) trained at L = 128 and evaluated at L, 4L, 8L and 16L. Two models of equal size
(d 64, 2 layers, MLP ratio 4; landmark attention adds one learned d-vector), ``lra.quick.fit``
(AdamW, warmup + cosine, batch 32), 2000 steps (at 800 steps, the first version of this check,
both models were still learning: per-digit 0.66-0.70 at L, docs/claims/landmark.md):

- attention + RoPE: the positive control (per-digit accuracy at L must reach 0.9 on both seeds)
  and the baseline;
- landmark attention, block_len 16, trained with the grouped softmax; the same weights evaluated
  with the grouped softmax over the whole context (its training mode, ``grouped@…``), with top-k
  retrieval per query (``top{k}@…``: every query reads its own block and its top-k blocks, as in
  token-by-token decoding), and with chunked retrieval as upstream evaluates long inputs
  (``top{k}/C{C}@…``: chunks of C tokens, a grouped softmax inside the chunk, retrieval only
  into the cache before it; ``retrieval_chunk`` of ``lrm.mixers.landmark``).

The protocol of ``common.py``: a learning-rate sweep per model (1e-3, 3e-3, 1e-2, extended at an
end) chosen by per-digit accuracy at L (``acc``; for landmark, in its training mode), the best
rate re-run on a second seed. Claims, on both seeds, margin 0.05:

- "retrieval reaches the passkey at 16L where attention does not": every retrieval mode at 16L
  above attention at 16L;
- "retrieval keeps its training-length accuracy": every retrieval mode at 16L within 0.05 of
  the model's accuracy at L.

Reported besides: whole-key accuracy of every mode and length for both seeds, and per answer
query the number of value vectors with a nonzero weight ("values") and of keys it scores
("keys scored": retrieval scores every cached landmark, then attends over k blocks and its own
block).
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
from lra import quick
from lra.data import recall_tasks

D_MODEL, N_LAYERS, BATCH, N_DIGITS = 64, 2, 32, 5
LRS = (1e-3, 3e-3, 1e-2)
MARGIN = 0.05
CONTROL = "attention + RoPE"


def set_topk(model: lrm.LRModel, k: int | None, chunk: int | None = None) -> None:
    for block in model.blocks:
        if hasattr(block.mixer, "retrieval_topk"):
            block.mixer.retrieval_topk, block.mixer.retrieval_chunk = k, chunk


@torch.no_grad()
def key_accuracy(model, x, y, batch_size: int) -> tuple[float, float]:
    """(per-digit accuracy, fraction of keys with every digit right)."""
    model.eval()
    digits = keys = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        t = y[i:i + batch_size]
        mask = t != quick.IGNORE
        right = (logits.argmax(-1) == t) | ~mask
        digits += (right & mask).sum().item()
        keys += right.all(-1).sum().item()
    return digits / (y != quick.IGNORE).sum().item(), keys / len(x)


def attended(mode: str, L: int, bl: int, n_digits: int) -> tuple[float, float]:
    """Mean over the answer queries of (values with nonzero weight, keys scored)."""
    vals, keys = [], []
    for t in range(L - n_digits, L):  # real positions of the answer queries
        e = t + t // bl  # its position in the sequence with landmarks
        P = bl + 1
        c, local = e // P, e % P + 1  # block, tokens of its block up to it (all ordinary)
        if mode == "attention":
            vals.append(t + 1)
            keys.append(t + 1)
        elif mode == "grouped":
            vals.append(t + 1)  # every earlier real token, through its block's landmark
            keys.append(e + 1)  # every position up to it (its own landmark comes later)
        elif ":" in mode:  # chunked: the chunk's positions up to it, k blocks of the cache
            k_, C = (int(x) for x in mode.split(":"))
            c0 = (c // (C // bl)) * (C // bl)  # the chunk's first block
            k = min(k_, c0)
            vals.append(k * bl + (c - c0) * bl + local)
            keys.append(c0 + k * P + e - c0 * P + 1)
        else:
            k = min(int(mode), c)
            vals.append(k * bl + local)
            keys.append(c + k * P + local)  # c landmarks scored, k blocks, the local context
    return sum(vals) / len(vals), sum(keys) / len(keys)


def modes(topk: list[int], chunks: list[int]) -> list[tuple[str, int | None, int | None]]:
    """The landmark model's evaluation modes: (name, k, chunk)."""
    return ([("grouped", None, None)] + [(f"top{k}", k, None) for k in topk]
            + [(f"top{k}/C{C}", k, C) for C in chunks for k in topk])


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, out=True, seed=None)
    p.add_argument("--L", type=int, default=128, help="training length")
    p.add_argument("--factors", type=int, nargs="+", default=[4, 8, 16],
                   help="test lengths as multiples of L (besides L itself)")
    p.add_argument("--block-len", type=int, default=16, help="landmark block length")
    p.add_argument("--topk", type=int, nargs="+", default=[2, 4], help="retrieved blocks k")
    p.add_argument("--chunk", type=int, nargs="*", default=[64],
                   help="chunk lengths of the chunked retrieval mode (multiples of --block-len; "
                        "none: per-query retrieval only)")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--n-train", type=int, default=20_000, help="training examples")
    p.add_argument("--n-test", type=int, default=128, help="test examples per length")
    protocol_options(p, lrs=LRS)
    args = setup(p, argv)
    if args.smoke:
        args.steps, args.n_train, args.n_test, args.max_extend = 6, 128, 8, 0
        args.L, args.factors, args.block_len, args.chunk = 32, [2], 8, [16]
    if any(f <= 1 for f in args.factors):
        p.error(f"--factors {args.factors}: every test length must be longer than L")
    if any(C % args.block_len for C in args.chunk):
        p.error(f"--chunk {args.chunk}: every chunk must be a multiple of --block-len "
                f"{args.block_len}")
    store = run_store(args)  # finished runs are read back: a stopped check resumes
    factors = [1, *sorted(set(args.factors))]
    lengths = [f * args.L for f in factors]
    evals = modes(args.topk, args.chunk)
    tests = {s: recall_tasks.extrapolation_sets("passkey", args.n_test, lengths,
                                                seed=10_000 + 100 * s, n_digits=N_DIGITS)
             for s in args.seeds}

    def run(label: str, lr: float, seed: int) -> Run:
        mixer, kw = (("attention", {"rope": True}) if label == CONTROL
                     else ("landmark", {"block_len": args.block_len}))
        model = build_lm(mixer=mixer, mixer_kwargs=kw, d=D_MODEL, layers=N_LAYERS,
                         vocab=recall_tasks.PASSKEY_VOCAB, seed=seed)
        x, y = recall_tasks.passkey(args.n_train, args.L, n_digits=N_DIGITS, seed=seed)
        losses, secs = train(model, x, y, steps=args.steps, batch_size=BATCH, lr=lr, seed=seed)
        scores: dict[str, float] = {}
        for name, k, chunk in ([("attn", None, None)] if label == CONTROL else evals):
            set_topk(model, k, chunk)
            for f, n in zip(factors, lengths, strict=True):
                digit, key = key_accuracy(model, *tests[seed][n], batch_size=16)
                scores[f"{name}@{f}L"], scores[f"key:{name}@{f}L"] = digit, key
        set_topk(model, None)
        first = "attn" if label == CONTROL else "grouped"
        scores["acc"] = scores[f"{first}@1L"]  # the rate's criterion: the training mode at L
        return Run(scores, curve_of(losses), secs)

    top = f"@{factors[-1]}L"
    retrieval = [name for name, k, _ in evals if k is not None]
    claims = [Claim(f"retrieval reaches the passkey at {factors[-1]}L where attention does not",
                    [Cmp(("landmark", m + top), (CONTROL, "attn" + top), MARGIN)
                     for m in retrieval]),
              Claim(f"retrieval keeps its training-length accuracy at {factors[-1]}L",
                    [Cmp(("landmark", m + top), ("landmark", "acc"), -MARGIN)
                     for m in retrieval])]
    check = Check(f"passkey trained at L={args.L}, tested to {factors[-1]}L",
                  [CONTROL, "landmark"], args.lrs, run,
                  Control(CONTROL, 0.9, why="per-digit, RoPE attention within its training "
                                            "length"),
                  claims, seeds=args.seeds, max_extend=args.max_extend, store=store)
    res = run_check(check)
    shown = ["acc", "attn" + top, "grouped" + top, *(m + top for m in retrieval)]
    head = (f"Passkey ({N_DIGITS} digits, chance 0.1 per digit), trained at L={args.L}, tested "
            f"at {', '.join(f'{f}L' for f in factors)}; {N_LAYERS} layers, d={D_MODEL}, MLP "
            f"ratio 4, {args.steps} steps of {BATCH}, {args.n_train} training examples, "
            f"{args.n_test} test examples per length; landmark block_len {args.block_len}. "
            f"Metrics are per-digit accuracy; \"acc\" is at L in each model's training mode; "
            f"top{{k}} is retrieval per query, top{{k}}/C{{C}} chunked retrieval with chunks of "
            f"C tokens")
    # every mode at every length, both seeds: per-digit / whole-key
    # (label, model, metric name, the mode's name in attended())
    rows = [("attention + RoPE", CONTROL, "attn", "attention")]
    rows += [(f"landmark, {name}", "landmark", name,
              "grouped" if k is None else f"{k}:{chunk}" if chunk else str(k))
             for name, k, chunk in evals]
    table = ["Per-digit / whole-key accuracy at the best rate, seed / seed:", "",
             "| model | " + " | ".join(f"{f}L = {n}" for f, n in zip(factors, lengths,
                                                                      strict=True)) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for label, model, name, _ in rows:
        runs = res.models[model].runs
        table.append(f"| {label} | " + " | ".join(
            " / ".join(f"{r.scores[f'{name}@{f}L']:.3f}" for r in runs) + " ; "
            + " / ".join(f"{r.scores[f'key:{name}@{f}L']:.2f}" for r in runs)
            for f in factors) + " |")
    table += ["", "Values attended / keys scored per answer query (mean over the "
              f"{N_DIGITS} answer positions):", "",
              "| model | " + " | ".join(str(n) for n in lengths) + " |",
              "|---" * (len(lengths) + 1) + "|"]
    for label, _, _, mode in rows:
        att = [attended(mode, n, args.block_len, N_DIGITS) for n in lengths]
        table.append(f"| {label} | " + " | ".join(f"{v:.0f} / {s:.0f}" for v, s in att) + " |")
    dump(res, args.json)
    report(head + "\n\n" + render(res, shown) + "\n\n" + "\n".join(table), args)


if __name__ == "__main__":
    main()
