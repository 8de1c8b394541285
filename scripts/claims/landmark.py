"""Claim check (landmark attention, Mohtashami & Jaggi 2023): top-k landmark retrieval reaches a
passkey far beyond the training length while attending to a few blocks per query.

The paper fine-tunes LLaMA-7B with landmarks and retrieves a passkey up to 32k tokens with k = 4
blocks of 50 tokens. A CPU-sized stand-in: the passkey task (``lra.data.recall_tasks.passkey``: a
5-digit key at a random depth in repeated filler, asked for at the end, teacher-forced) trained at L
and evaluated at 4L, 8L and 16L. Three models of equal size (same width, depth, MLP; landmark
attention adds one learned d-vector):

- attention + RoPE (the baseline);
- landmark attention, evaluated with the grouped softmax over the whole context (its training
  mode);
- the same landmark model, evaluated with top-k retrieval (k = 2 and 4), per query (each query
  reads its own block and its top-k blocks, as in token-by-token decoding: the mode the numbers
  in docs/claims/landmark.md were measured in) and, with ``--chunk C``, as upstream evaluates
  long inputs (chunks of C tokens, a grouped softmax inside the chunk, retrieval only into the
  cache before it; ``retrieval_chunk`` of ``lrm.mixers.landmark``).

Reported: per-digit accuracy, whole-key accuracy, and per answer query the number of value
vectors with a nonzero weight ("values") and of keys it scores ("keys scored": retrieval scores
every cached landmark, then attends over k blocks and its own block).

    python scripts/claims/landmark.py     # prints the tables of docs/claims/landmark.md
    python scripts/claims/landmark.py --chunk 64  # also chunked retrieval, chunks of 64
    python scripts/claims/landmark.py --quick     # a smoke run
"""

from __future__ import annotations

import time

import torch
from common import build_lm, parser, report, setup, train

import lrm
from lra import quick
from lra.data import recall_tasks


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


def main() -> None:
    p = parser(__doc__, out=True)
    p.add_argument("--L", type=int, default=128, help="training length")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 4, 8, 16],
                   help="test lengths as multiples of L")
    p.add_argument("--block_len", type=int, default=16, help="landmark block length")
    p.add_argument("--topk", type=int, nargs="+", default=[2, 4], help="retrieved blocks k")
    p.add_argument("--chunk", type=int, nargs="*", default=[],
                   help="also evaluate chunked retrieval with chunks of these many tokens "
                   "(multiples of block_len)")
    p.add_argument("--d", type=int, default=64, help="model width")
    p.add_argument("--layers", type=int, default=2, help="layers")
    p.add_argument("--steps", type=int, default=800, help="training steps")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--n_train", type=int, default=20_000, help="training examples")
    p.add_argument("--n_test", type=int, default=64, help="test examples per length")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    a = setup(p)
    if a.quick:
        a.steps, a.n_train, a.n_test, a.factors = 20, 256, 8, [1, 2]
    t_start = a.t_start

    n_digits = 5
    x_tr, y_tr = recall_tasks.passkey(a.n_train, a.L, n_digits=n_digits, seed=0)
    lengths = [f * a.L for f in a.factors]
    tests = recall_tasks.extrapolation_sets("passkey", a.n_test, lengths, n_digits=n_digits)

    trained = {}
    curves = {}
    for name, mixer, kw in [("attention + RoPE", "attention", {"rope": True}),
                            ("landmark", "landmark", {"block_len": a.block_len})]:
        t0 = time.time()
        model = build_lm(mixer=mixer, mixer_kwargs=kw, d=a.d, layers=a.layers,
                         vocab=recall_tasks.PASSKEY_VOCAB, seed=a.seed)
        losses, _ = train(model, x_tr, y_tr, steps=a.steps, batch_size=a.batch, lr=a.lr,
                          seed=a.seed)
        trained[name] = model
        every = max(1, a.steps // 10)
        curves[name] = [(s, sum(losses[max(0, s - every + 1):s + 1]) / len(
            losses[max(0, s - every + 1):s + 1])) for s in range(every - 1, a.steps, every)]
        print(f"# trained {name}: {sum(p.numel() for p in model.parameters())} parameters, "
              f"final loss {losses[-1]:.3f}, {time.time() - t0:.0f} s", flush=True)

    rows = []
    modes = [("attention + RoPE", "attention", None), ("landmark, grouped softmax", "grouped",
                                                        None)]
    modes += [(f"landmark, top-{k} retrieval", str(k), k) for k in a.topk]
    modes += [(f"landmark, top-{k} retrieval, chunks of {C}", f"{k}:{C}", k) for C in a.chunk
              for k in a.topk]
    for label, mode, k in modes:
        model = trained["attention + RoPE" if mode == "attention" else "landmark"]
        set_topk(model, k, int(mode.split(":")[1]) if ":" in mode else None)
        t0 = time.time()
        accs = [key_accuracy(model, *tests[n], batch_size=16) for n in lengths]
        att = [attended(mode, n, a.block_len, n_digits) for n in lengths]
        rows.append((label, accs, att, time.time() - t0))
        print(f"# evaluated {label}: {time.time() - t0:.0f} s", flush=True)
    set_topk(trained["landmark"], None)

    wall = time.time() - t_start
    out = [f"Passkey, trained at L = {a.L} ({n_digits} digits; d {a.d}, {a.layers} layers, MLP "
           f"ratio 4, batch {a.batch}, {a.steps} steps, lr {a.lr}, {a.n_train} training "
           f"examples, {a.n_test} test examples per length, seed {a.seed}; landmark block_len "
           f"{a.block_len}). Wall time {wall / 60:.1f} min on {a.threads} thread(s).", "",
           "Per-digit accuracy / whole-key accuracy:", "",
           "| model | " + " | ".join(f"{n // a.L}L = {n}" for n in lengths) + " |",
           "|---" * (len(lengths) + 1) + "|"]
    for label, accs, _, _ in rows:
        out.append(f"| {label} | " + " | ".join(f"{d:.3f} / {k:.2f}" for d, k in accs) + " |")
    out += ["", "Values attended / keys scored per answer query (mean over the 5 answer "
            "positions):", "", "| model | " + " | ".join(f"{n}" for n in lengths) + " |",
            "|---" * (len(lengths) + 1) + "|"]
    for label, _, att, _ in rows:
        out.append(f"| {label} | " + " | ".join(f"{v:.0f} / {s:.0f}" for v, s in att) + " |")
    out += ["", "Training loss (mean over the preceding tenth of training):", "",
            "| step | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
    for i in range(len(next(iter(curves.values())))):
        step = next(iter(curves.values()))[i][0] + 1
        out.append(f"| {step} | " + " | ".join(f"{c[i][1]:.3f}" for c in curves.values()) + " |")
    print()
    report("\n".join(out), a)


if __name__ == "__main__":
    main()
