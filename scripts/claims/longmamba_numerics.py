"""Diagnosis for the LongMamba check: why does the filtered model's long-input accuracy move
so much between trainings that differ only in rounding?

    python scripts/claims/longmamba_numerics.py                    # both parts, about 12 min
    python scripts/claims/longmamba_numerics.py --part thresholds  # about 6 min on 1 core

Trains one model exactly as ``scripts/claims/longmamba.py`` does (seed 1 at 5e-3 by default;
same curriculum, data and seeds) and calibrates it. Then

- ``numerics``: scores passkey at 4096 and 8192 tokens with and without the filter three ways:
  float32 with the SSD chunk the CPU path picks for the shape, float32 with the caller's chunk
  (64, what the CPU path used before it chose chunks by shape), and float64;
- ``thresholds``: for every global channel, where θ(L) falls among the Δ of test inputs (the
  share of tokens dropped, and the share whose Δ lies within ±2% of θ), then the accuracy with
  θ scaled by b = 0.95 ... 1.05 (``LongMambaConfig.threshold_scale``). The passkey's filler is
  a short repeated pattern, so the first layer's Δ takes a handful of values, one per filler
  position; a θ sitting on one of them makes the result hinge on rounding.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from common import parser, setup
from longmamba import curriculum, held_out, train_calibrated

import lrm.longmamba as lm
import lrm.ops.ssd as ssd_mod
from lra import quick

T_TR = 256


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__, seed=1)
    p.add_argument("--lr", type=float, default=5e-3, help="training rate")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192],
                   help="evaluation lengths (each must be one of the check's)")
    p.add_argument("--part", choices=["numerics", "thresholds", "all"], default="all",
                   help="which diagnosis to run after training")
    p.add_argument("--scales", type=float, nargs="+", default=[0.95, 0.98, 1.0, 1.02, 1.05],
                   help="threshold scales b tried by the thresholds part")
    args = setup(p, argv)
    check_lengths = [T_TR, 1024, 2048, 4096, 8192]  # the check's test seeds follow this order
    if any(L not in check_lengths for L in args.lengths):
        p.error(f"--lengths must be among {check_lengths[1:]}")
    model, _ = train_calibrated("mamba2", args.lr, args.seed, curriculum(T_TR), T_TR)
    tests = {L: held_out(100, L, args.seed, check_lengths.index(L)) for L in args.lengths}

    def score(tag: str) -> None:
        t0, parts = time.time(), []
        for L, (X, Y) in tests.items():
            with lm.disabled(model):
                vanilla = quick.accuracy(model, X, Y, batch_size=16)
            filtered = quick.accuracy(model, X, Y, batch_size=16)
            parts.append(f"L={L}: without {vanilla:.2f}, with the filter {filtered:.2f}")
        print(f"{tag}: " + "; ".join(parts) + f" ({time.time() - t0:.0f} s)", flush=True)

    if args.part in ("thresholds", "all"):
        thresholds(model, tests, args.scales)
    if args.part == "thresholds":
        return
    score(f"float32, the CPU path's chunk ({ssd_mod.cpu_chunk_size(16, 16, 64)})")
    auto = ssd_mod.cpu_chunk_size
    ssd_mod.cpu_chunk_size = lambda head_dim, d_state, chunk: chunk  # the caller's 64
    try:
        score("float32, chunk 64")
    finally:
        ssd_mod.cpu_chunk_size = auto
    model.double()
    score("float64, the CPU path's chunk")


def thresholds(model: torch.nn.Module, tests: dict[int, tuple[torch.Tensor, torch.Tensor]],
               scales: list[float], n_inputs: int = 8) -> None:
    """Where θ falls among the test inputs' Δ per global channel, then accuracy against b."""
    L = max(tests)
    filters = lm.filters(model)
    seen: dict[int, torch.Tensor] = {}
    hooks = [f.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, inp[0]))
             for i, f in enumerate(filters)]  # inp[0]: Δ (B, C, L) before the filter
    try:
        with torch.no_grad():
            model(tests[L][0][:n_inputs])
    finally:
        for h in hooks:
            h.remove()
    print(f"Global channels at L={L} ({n_inputs} test inputs): share of tokens dropped "
          "(Δ ≤ θ) and share with Δ within ±2% of θ", flush=True)
    for i, f in enumerate(filters):
        theta = f.threshold(L)
        for c in torch.nonzero(f.global_channels()).flatten().tolist():
            d, t = seen[i][:, c].flatten(), float(theta[c])
            dropped = float((d <= t).float().mean())
            near = float(((d - t).abs() <= 0.02 * t).float().mean())
            others = ", ".join(f"θ({n}) {float(f.threshold(n)[c]):.3e}" for n in sorted(tests)
                               if n != L)  # θ stops growing once it reaches the clamp value
            print(f"  layer {i} channel {c}: θ {t:.3e}, dropped {dropped:.3f}, "
                  f"within ±2% {near:.3f}" + (f" ({others})" if others else ""), flush=True)
    base = [f.config for f in filters]
    try:
        for b in scales:
            for f, cfg in zip(filters, base, strict=True):
                f.config = dataclasses.replace(cfg, threshold_scale=b)
            accs = [f"L={n}: {quick.accuracy(model, X, Y, batch_size=16):.2f}"
                    for n, (X, Y) in tests.items()]
            print(f"with the filter, θ × {b:g}: " + "; ".join(accs), flush=True)
    finally:
        for f, cfg in zip(filters, base, strict=True):
            f.config = cfg


if __name__ == "__main__":
    main()
