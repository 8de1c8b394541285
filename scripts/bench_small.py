"""Speed at the sizes models are trained at on a CPU, as ratios between alternatives timed
interleaved in one process (one torch thread).

    python scripts/bench_small.py steps --mixers mamba mamba:lean --d 32 64 128 --L 128
    python scripts/bench_small.py steps --mixers mamba mamba2 gdn --d 32 64 128 --L 128 512
    python scripts/bench_small.py scan --d-inner 64 128 256 --L 128 512 2048

``steps``: one training step (forward, backward, AdamW) of a 2-layer ``LRModel`` with an LM head
(vocab 256, batch 32) per mixer, against ``attention`` at the same (d, L). ``scan``: forward and
backward of the bare selective scan (batch 32, N 16), every CPU algorithm against the one the
dispatch picks. Within a case the alternatives run in turn (A, B, C, A, B, C, ...) after one
warm-up each, and the table gives the median time of each and its ratio to the baseline: on a
shared machine only the ratios are meaningful, since load moves every alternative alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions called in turn ``repeats`` times."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def training_step(mixer: str, d: int, L: int, batch: int = 32) -> Callable[[], None]:
    """``mamba:lean`` is ``mamba`` with the small-shape scan switched off (the lean scan)."""
    from lrm.config import ModelConfig
    from lrm.model import LRModel
    from lrm.ops import selective_scan as ss

    mixer, _, variant = mixer.partition(":")
    torch.manual_seed(0)
    model = LRModel(ModelConfig(mixer=mixer, d_model=d, n_layers=2, vocab_size=256, head="lm"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 256, (batch, L))

    def step() -> None:
        saved = ss.SMALL_SLICE_ELEMENTS
        if variant == "lean":
            ss.SMALL_SLICE_ELEMENTS = 0
        try:
            logits = model(tokens)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        finally:
            ss.SMALL_SLICE_ELEMENTS = saved

    return step


def scan_pass(fn: Callable, d_inner: int, L: int, batch: int = 32, n: int = 16
              ) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g).requires_grad_()

    u, delta, B, C, z = r(batch, d_inner, L), r(batch, d_inner, L), r(batch, n, L), \
        r(batch, n, L), r(batch, d_inner, L)
    A = (-torch.rand(d_inner, n, generator=g) * 4 - 0.1).requires_grad_()
    D, bias = r(d_inner), r(d_inner)

    def run() -> None:
        y = fn(u, delta, A, B, C, D, z, bias, True)
        y.sum().backward()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=["steps", "scan"],
                   help="steps: a training step per mixer against attention; scan: the "
                        "selective scan's CPU algorithms against the dispatched one")
    p.add_argument("--mixers", nargs="+", default=["mamba"],
                   help="(steps) registry names; mamba:lean is mamba with the small-shape "
                        "scan switched off")
    p.add_argument("--d", nargs="+", type=int, default=[32, 64], help="(steps) model widths")
    p.add_argument("--d-inner", nargs="+", type=int, default=[64, 128, 256],
                   help="(scan) channels of the scan")
    p.add_argument("--L", nargs="+", type=int, default=[128, 512], help="sequence lengths")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs of each alternative; the table gives the median")
    args = p.parse_args()
    torch.set_num_threads(1)

    if args.what == "steps":
        print("| d | L | attention (ms) | " + " | ".join(f"{m} (ms, ×attn)" for m in args.mixers)
              + " |")
        print("|---" * (3 + len(args.mixers)) + "|")
        for L in args.L:
            for d in args.d:
                fns = {m: training_step(m, d, L) for m in ["attention", *args.mixers]}
                t = interleaved(fns, args.repeats)
                cells = [f"{t[m] * 1e3:.0f}, **{t[m] / t['attention']:.2f}×**"
                         for m in args.mixers]
                print(f"| {d} | {L} | {t['attention'] * 1e3:.0f} | " + " | ".join(cells) + " |",
                      flush=True)
    else:
        from lrm.ops.selective_scan import (
            selective_scan,
            selective_scan_lean,
            selective_scan_small,
        )

        algos = {"dispatch": selective_scan, "small": selective_scan_small,
                 "lean": selective_scan_lean}
        print("| d_inner | L | B·D·L·N | dispatch (ms) | small (×) | lean (×) |")
        print("|---|---|---|---|---|---|")
        for L in args.L:
            for e in args.d_inner:
                t = interleaved({k: scan_pass(f, e, L) for k, f in algos.items()}, args.repeats)
                print(f"| {e} | {L} | 2^{(32 * e * L * 16).bit_length() - 1} | "
                      f"{t['dispatch'] * 1e3:.0f} | {t['small'] / t['dispatch']:.2f} | "
                      f"{t['lean'] / t['dispatch']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
