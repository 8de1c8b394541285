"""Diagnosis for the LongMamba check: does the filtered model's long-input accuracy depend on
the SSD chunk or on float32 rounding?

    python scripts/claims/longmamba_numerics.py          # seed 1 at 5e-3, about 7 min on 1 core

Trains one model exactly as ``scripts/claims/longmamba.py`` does (same curriculum, data and
seeds), calibrates it, then scores passkey at 4096 and 8192 tokens with and without the filter
three ways: float32 with the SSD chunk the CPU path picks for the shape, float32 with the
caller's chunk (64, what the CPU path used before it chose chunks by shape), and float64.
"""

from __future__ import annotations

import time

import torch
from common import parser, setup
from longmamba import build

import lrm.longmamba as lm
import lrm.ops.ssd as ssd_mod
from lra import quick
from lra.data import recall_tasks

T_TR = 256


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, seed=1)
    p.add_argument("--lr", type=float, default=5e-3, help="training rate")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192],
                   help="evaluation lengths (each must be one of the check's)")
    args = setup(p, argv)
    check_lengths = [T_TR, 1024, 2048, 4096, 8192]  # the check's test seeds follow this order
    if any(L not in check_lengths for L in args.lengths):
        p.error(f"--lengths must be among {check_lengths[1:]}")
    seed = args.seed
    torch.manual_seed(seed)
    model = build("mamba2")
    for i, (L, steps) in enumerate([(32, 150), (64, 150), (128, 150), (T_TR, 250)]):
        X, Y = recall_tasks.passkey(8192, L, n_digits=1, seed=seed + 100 * i)
        quick.fit(model, X, Y, steps=steps, batch_size=32, lr=args.lr, seed=seed + i)
    Xc, _ = recall_tasks.passkey(32, T_TR, n_digits=1, seed=seed + 7)
    lm.calibrate(model, [Xc], train_len=T_TR)
    tests = {L: recall_tasks.passkey(100, L, n_digits=1,
                                     seed=seed + 10_000 + check_lengths.index(L))
             for L in args.lengths}

    def score(tag: str) -> None:
        t0, parts = time.time(), []
        for L, (X, Y) in tests.items():
            with lm.disabled(model):
                vanilla = quick.accuracy(model, X, Y, batch_size=16)
            filtered = quick.accuracy(model, X, Y, batch_size=16)
            parts.append(f"L={L}: without {vanilla:.2f}, with the filter {filtered:.2f}")
        print(f"{tag}: " + "; ".join(parts) + f" ({time.time() - t0:.0f} s)", flush=True)

    score(f"float32, the CPU path's chunk ({ssd_mod.cpu_chunk_size(16, 16, 64)})")
    auto = ssd_mod.cpu_chunk_size
    ssd_mod.cpu_chunk_size = lambda head_dim, d_state, chunk: chunk  # the caller's 64
    try:
        score("float32, chunk 64")
    finally:
        ssd_mod.cpu_chunk_size = auto
    model.double()
    score("float64, the CPU path's chunk")


if __name__ == "__main__":
    main()
