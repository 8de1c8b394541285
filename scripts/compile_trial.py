"""Does ``torch.compile`` speed up lrm's CPU path? Eager against compiled, one mixer at a time.

    python scripts/compile_trial.py --mixers mamba mamba2 gdn fox s4d --L 2048 --d 128 \
        --threads 1 --out docs/bench/compile.md

For each mixer, in one process: the bare mixer (fp32, batch 1, random input of shape (1, L, d))
runs forward+backward eagerly and through ``torch.compile`` (Inductor, default mode). Reported:
the compile time (the first compiled call), the median time of ``--repeats`` timed passes of
each after warm-up, and how far the compiled output and input gradient are from the eager ones
(max |difference| over max |eager|). A mixer whose compilation fails is listed with the error.
Nothing in lrm uses ``torch.compile``; this script decides whether an opt-in would be worth it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lrm


def fwd_bwd(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    y = m(x)
    y = y[0] if isinstance(y, tuple) else y
    (g,) = torch.autograd.grad(y.square().mean(), x)
    return y.detach(), g


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def trial(mixer: str, L: int, d: int, repeats: int) -> dict:
    torch.manual_seed(0)
    m = lrm.build(mixer, d=d).eval()
    x = torch.randn(1, L, d)
    y_e, g_e = fwd_bwd(m, x)
    row = {"mixer": mixer, "eager_s": median_s(lambda: fwd_bwd(m, x), repeats)}
    try:
        mc = torch.compile(m)
        t0 = time.perf_counter()
        y_c, g_c = fwd_bwd(mc, x)
        row["compile_s"] = time.perf_counter() - t0
        row["compiled_s"] = median_s(lambda: fwd_bwd(mc, x), repeats)
        row["out_diff"] = float((y_c - y_e).abs().max() / y_e.abs().max())
        row["grad_diff"] = float((g_c - g_e).abs().max() / g_e.abs().max())
        row["speedup"] = row["eager_s"] / row["compiled_s"]
    except Exception as err:  # a failure is a result here
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    torch._dynamo.reset()
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mixers", nargs="+", default=["mamba", "mamba2", "gdn", "fox", "s4d"])
    ap.add_argument("--L", type=int, default=2048)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for mixer in args.mixers:
        row = trial(mixer, args.L, args.d, args.repeats)
        print(row, flush=True)
        rows.append(row)
    lines = [f"# torch.compile on the CPU path: L = {args.L}, d = {args.d}, batch 1, fp32, "
             f"{args.threads} thread(s)", "",
             f"`python {' '.join(['scripts/compile_trial.py', *(argv or sys.argv[1:])])}` "
             f"(torch {torch.__version__}, {platform.processor() or platform.machine()}).", "",
             "| mixer | eager s | compiled s | speedup | compile s | out diff | grad diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mixer']} | {r['eager_s']:.3f} | failed: {r['error']} "
                         f"| | | | |")
        else:
            lines.append(f"| {r['mixer']} | {r['eager_s']:.3f} | {r['compiled_s']:.3f} "
                         f"| {r['speedup']:.2f}x | {r['compile_s']:.0f} | {r['out_diff']:.1e} "
                         f"| {r['grad_diff']:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
