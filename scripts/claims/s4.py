"""Claim check (S4/S4D): a state space layer models dependencies across ~1K steps that a
same-size attention model, trained with the same budget, does not.

    python scripts/claims/s4.py --task filter   # recorded in docs/claims/s4.md
    python scripts/claims/s4.py --task copy     # recorded in docs/claims/s4.md
    python scripts/claims/s4.py --steps 5       # a smoke run

Two generated, seeded tasks, scored only at positions t >= D = 1024 (targets are -100 before):

- ``filter`` (long linear filter): inputs are i.i.d. symbols 1/2 read as x = ±1; the target at t
  is the sign of s_t = Σ_{ℓ<D} h_ℓ x_{t−ℓ} with the fixed kernel h_ℓ = exp(−ℓ/400) cos(2πℓ/300):
  an output that depends, with oscillating signed weights, on the last 1024 inputs. This is
  what an SSM is built to represent (one damped complex mode is exactly such a kernel);
  softmax attention averages with non-negative weights. Chance 0.5.
- ``copy`` (delayed copy): a stream of random symbols 1..4, each held for 16 steps; the target
  at t is the symbol D steps back. Chance 0.25. Nothing in the content marks the answer; a
  convolution needs a bump at lag D, attention must find the offset through RoPE phases.

Models: lrm.LRModel with head="lm", 2 layers, d_model 64, causal. S4D (d_state 64, its customary
block: no MLP) and softmax attention with RoPE (its customary block: MLP ratio 4, so it has
about 4x the parameters). Both trained with lra.quick.fit (AdamW, weight decay 0.05, warmup +
cosine, the same steps and batch size), each at its customary learning rate (S4: 1e-2 with the
SSM parameters at 1e-3; attention: 1e-3), evaluated with lra.quick.accuracy on held-out
sequences. Prints a markdown table.
"""

from __future__ import annotations

import math
import time

import torch
from common import build_lm, parser, setup, train

import lrm
from lra.objective import IGNORE
from lra.quick import accuracy


def delayed_copy(n: int, seq_len: int, delay: int, *, vocab: int = 4, hold: int = 16,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, L) of symbols 1..vocab held for ``hold`` steps; targets[t] = inputs[t - delay]
    for t >= delay, else -100."""
    g = torch.Generator().manual_seed(seed)
    sym = torch.randint(1, vocab + 1, (n, -(-seq_len // hold)), generator=g)
    inputs = sym.repeat_interleave(hold, dim=1)[:, :seq_len]
    targets = torch.full_like(inputs, IGNORE)
    targets[:, delay:] = inputs[:, : seq_len - delay]
    return inputs, targets


def long_filter(n: int, seq_len: int, delay: int, *, tau: float = 400.0, period: float = 300.0,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, L) of symbols 1/2 (x = +1/−1); targets[t] = 1 if Σ_{ℓ<delay} h_ℓ x_{t−ℓ} > 0
    else 2, for t >= delay, with h_ℓ = exp(−ℓ/tau)·cos(2πℓ/period)."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, 3, (n, seq_len), generator=g)
    x = (3 - 2 * inputs).double()  # 1 -> +1, 2 -> -1
    ell = torch.arange(delay, dtype=torch.float64)
    h = torch.exp(-ell / tau) * torch.cos(2 * math.pi * ell / period)
    # s_t = Σ_ℓ h_ℓ x_{t−ℓ} for t = delay..L−1 (a valid correlation with the reversed kernel)
    s = torch.nn.functional.conv1d(x[:, None], h.flip(0)[None, None])[:, 0, 1:]
    targets = torch.full_like(inputs, IGNORE)
    targets[:, delay:] = torch.where(s > 0, 1, 2)
    return inputs, targets


def build(mixer: str, d: int, layers: int, vocab: int, seed: int) -> lrm.LRModel:
    kw = {"d_state": 64} if mixer == "s4d" else {}
    return build_lm(mixer=mixer, mixer_kwargs=kw, d=d, layers=layers, vocab=vocab + 1, seed=seed)


def main() -> None:
    p = parser(__doc__, threads=2)
    p.add_argument("--task", choices=["filter", "copy"], default="filter", help="the task")
    p.add_argument("--seq-len", type=int, default=1280, help="sequence length")
    p.add_argument("--delay", type=int, default=1024, help="the dependency's distance D")
    p.add_argument("--d", type=int, default=64, help="model width")
    p.add_argument("--layers", type=int, default=2, help="layers")
    p.add_argument("--train", type=int, default=1000, help="training sequences")
    p.add_argument("--test", type=int, default=100, help="test sequences")
    p.add_argument("--steps", type=int, default=100, help="training steps")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--runs", nargs="+", default=["s4d:0.01", "attention:0.001"],
                   help="mixer:lr pairs")
    args = setup(p)

    t0 = args.t_start
    make = long_filter if args.task == "filter" else delayed_copy
    vocab, chance = (2, 0.5) if args.task == "filter" else (4, 0.25)
    x_tr, y_tr = make(args.train, args.seq_len, args.delay, seed=args.seed)
    x_te, y_te = make(args.test, args.seq_len, args.delay, seed=args.seed + 1)
    print(f"task {args.task}: L={args.seq_len}, D={args.delay}, chance {chance:.2f}; "
          f"{args.train} train / {args.test} test sequences; {args.steps} steps of batch "
          f"{args.batch}; d_model {args.d}, {args.layers} layers\n", flush=True)
    rows = []
    for run in args.runs:
        mixer, lr = run.split(":")
        model = build(mixer, args.d, args.layers, vocab, args.seed)
        n_params = sum(q.numel() for q in model.parameters())
        losses, secs = train(model, x_tr, y_tr, steps=args.steps, batch_size=args.batch,
                             lr=float(lr), weight_decay=0.05, seed=args.seed,
                             log_every=max(1, args.steps // 5))
        acc = accuracy(model, x_te, y_te, batch_size=50)
        tail = sum(losses[-20:]) / len(losses[-20:])
        rows.append((mixer, lr, n_params, tail, acc, secs))
        print(f"-> {mixer} lr {lr}: test accuracy {acc:.3f} ({secs:.0f} s)\n", flush=True)

    print("| model | lr | params | final train loss | test accuracy | train time (s) |")
    print("|---|---|---|---|---|---|")
    for mixer, lr, n, loss, acc, secs in rows:
        print(f"| {mixer} | {lr} | {n:,} | {loss:.3f} | {acc:.3f} | {secs:.0f} |")
    print(f"\nchance: {chance:.2f}; total wall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
