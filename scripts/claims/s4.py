"""Claim check (S4/S4D, Gu, Goel & Ré 2022): a state space layer models dependencies across
~1K steps that a same-size attention model, trained with the same budget, does not.

    python scripts/claims/s4.py --out docs/claims/s4_run.md   # both tasks (see To run)
    python scripts/claims/s4.py --tasks copy                  # one task
    python scripts/claims/s4.py --smoke                       # the plumbing, in seconds

Two generated, seeded tasks, scored only at positions t >= D (targets are -100 before):

- ``filter`` (long linear filter): inputs are i.i.d. symbols 1/2 read as x = ±1; the target at t
  is the sign of s_t = Σ_{ℓ<D} h_ℓ x_{t−ℓ} with the kernel h_ℓ = exp(−ℓ/τ) cos(2πℓ/P), τ = 400
  and P = 300 at D = 1024 (both scale with D, so every D has the same kernel shape): an output
  that depends, with oscillating signed weights, on the last D inputs. This is what
  an SSM is built to represent (one damped complex mode is exactly such a kernel); softmax
  attention averages with non-negative weights. Chance 0.5.
- ``copy`` (delayed copy): a stream of random symbols 1..4, each held for 16 steps; the target
  at t is the symbol D steps back. Chance 0.25. Nothing in the content marks the answer; a
  convolution needs a bump at lag D, attention must find the offset through RoPE phases.

Both at L = 1280 and D = 1024, 1000 training and 100 held-out sequences.

Models: ``lrm.LRModel(head="lm")``, 2 layers, d_model 64, causal, ``lra.quick.fit`` (AdamW,
weight decay 0.05, warmup + cosine, batch 16), 100 steps (the budget of the first version of
this check, docs/claims/s4.md, at which S4D learned the filter and attention the copy):

- s4d: d_state 64, its customary block (no MLP); S4's recipe puts A, B and dt at 1e-3 whatever
  the rate swept (``lrm``'s parameter groups);
- attention: softmax attention with RoPE, its customary block (MLP ratio 4, about 4x the
  parameters of s4d);
- attention, D = 64: the same attention on the same task with the dependency only 64 steps
  back (for ``filter``, the same kernel shrunk 16 times). The positive control: it must reach
  0.9 on both seeds, which shows that the recipe trains attention on this task, so that a
  failure at D = 1024 is the distance's.

The protocol of ``common.py``: a learning-rate sweep per model (s4d 3e-3, 1e-2, 3e-2 around S4's
1e-2; attention 3e-4, 1e-3, 3e-3 around its customary 1e-3; extended at an end), the best rate
re-run on a second seed (data, weights and batches all follow the seed). Claim, on both seeds:
s4d's accuracy above attention's at D = 1024 by 0.05. Each task is its own check.
"""

from __future__ import annotations

import math

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
from lra.objective import IGNORE
from lra.quick import accuracy

D_MODEL, N_LAYERS, BATCH, CONTROL_DELAY = 64, 2, 16, 64
CONTROL = f"attention, D = {CONTROL_DELAY}"
MODELS = ("s4d", "attention")
LRS = {"s4d": (3e-3, 1e-2, 3e-2), "attention": (3e-4, 1e-3, 3e-3), CONTROL: (3e-4, 1e-3, 3e-3)}
TASKS = {"filter": (2, 0.5), "copy": (4, 0.25)}  # task -> (vocabulary, chance)
MARGIN = 0.05


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


def build(mixer: str, vocab: int, seed: int) -> lrm.LRModel:
    """The customary block of each: S4D without an MLP, attention with MLP ratio 4."""
    if mixer == "s4d":
        return build_lm(mixer="s4d", mixer_kwargs={"d_state": 64}, d=D_MODEL, layers=N_LAYERS,
                        vocab=vocab + 1, seed=seed, mlp_ratio=0)
    return build_lm(mixer="attention", d=D_MODEL, layers=N_LAYERS, vocab=vocab + 1, seed=seed)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, out=True, seed=None)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS),
                   help="the tasks, each its own check")
    p.add_argument("--seq-len", type=int, default=1280, help="sequence length")
    p.add_argument("--delay", type=int, default=1024, help="the dependency's distance D")
    p.add_argument("--n-train", type=int, default=1000, help="training sequences")
    p.add_argument("--n-test", type=int, default=100, help="held-out sequences")
    p.add_argument("--steps", type=int, default=100, help="training steps")
    protocol_options(p, lrs=LRS["s4d"])
    args = setup(p, argv)
    if args.smoke:
        args.steps, args.n_train, args.n_test, args.max_extend = 4, 32, 8, 0
        args.seq_len, args.delay = 160, 96
    if not CONTROL_DELAY < args.delay < args.seq_len:
        p.error(f"--delay {args.delay}: needs {CONTROL_DELAY} (the control's) < D < --seq-len "
                f"{args.seq_len}")
    store = run_store(args)  # finished runs are read back: a stopped check resumes
    parts = []
    for task in args.tasks:
        make = long_filter if task == "filter" else delayed_copy
        vocab, chance = TASKS[task]

        def run(label: str, lr: float, seed: int, make=make, vocab=vocab, task=task) -> Run:
            delay = CONTROL_DELAY if label == CONTROL else args.delay
            # the filter's kernel keeps its shape at every D: tau and period scale with it
            kw = dict(tau=400 * delay / 1024, period=300 * delay / 1024) if task == "filter" \
                else {}
            x, y = make(args.n_train, args.seq_len, delay, seed=seed, **kw)
            xt, yt = make(args.n_test, args.seq_len, delay, seed=seed + 10_000, **kw)
            model = build("attention" if label == CONTROL else label, vocab, seed)
            losses, secs = train(model, x, y, steps=args.steps, batch_size=BATCH, lr=lr,
                                 weight_decay=0.05, seed=seed)
            return Run({"acc": accuracy(model, xt, yt, batch_size=50)}, curve_of(losses), secs)

        claim = Claim(f"S4D learns the dependency {args.delay} steps back better than attention",
                      [Cmp(("s4d", "acc"), ("attention", "acc"), MARGIN)])
        check = Check(f"{task}, L={args.seq_len}, D={args.delay}", [CONTROL, *MODELS],
                      LRS["s4d"], run,
                      Control(CONTROL, 0.9, why="attention trains on this task at a short lag"),
                      [claim], seeds=args.seeds, max_extend=args.max_extend, store=store,
                      lrs_by_model=LRS if args.lrs == list(LRS["s4d"]) else {})
        res = run_check(check)
        params = {m: sum(q.numel() for q in build(m, vocab, 0).parameters()) for m in MODELS}
        parts.append(f"Task {task}: L={args.seq_len}, D={args.delay} (control: D="
                     f"{CONTROL_DELAY}), chance {chance:.2f}; {args.n_train} training / "
                     f"{args.n_test} held-out sequences; {args.steps} steps of {BATCH}; "
                     f"parameters: s4d {params['s4d']:,}, attention {params['attention']:,}\n\n"
                     + render(res))
        if args.json:
            dump(res, args.json.with_name(f"{args.json.stem}-{task}.json"))
    report("\n\n".join(parts), args)


if __name__ == "__main__":
    main()
