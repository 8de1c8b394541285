"""Forward+backward time and peak memory of mixers across sequence lengths and backends.

    python scripts/bench.py --mixers attention fox --lengths 1024 2048 4096 8192 \
        --d 256 --batch 1 --backends ref --out docs/bench/fox.md

Each (mixer, backend, length) case runs in a fresh subprocess, so that timings do not share
caches and the peak memory is the case's own:

- time: median over ``--repeats`` timed forward+backward passes of the bare mixer (after one
  warm-up pass), on ``x`` of shape (batch, L, d);
- memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the pass; on CPU, the growth of
  the process's peak resident set (ru_maxrss) over its value just before the first pass, which
  counts activations, gradients and workspace but not the model and inputs.

Growth exponents are log(t2/t1)/log(L2/L1) between consecutive lengths: ~1 is linear, ~2 is
quadratic; L log L shows as slightly above 1. The script writes a markdown table and a log-log
plot next to it (``<out>.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CASE_SCRIPT = r"""
import json, resource, sys, time, statistics
import torch
import lrm
from lrm.ops import _kernels
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
dev = cfg["device"]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["dtype"]]
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
import os
os.environ["LRM_BACKEND"] = cfg["backend"]
m = lrm.mixer(cfg["mixer"], cfg["d"], **cfg["kwargs"]).to(dev, dtype)
x = torch.randn(cfg["batch"], cfg["L"], cfg["d"], device=dev, dtype=dtype, requires_grad=True)
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def step():
    y, _ = m(x)
    y.float().square().mean().backward()
    m.zero_grad(set_to_none=True)
    x.grad = None
base = rss_mb()
if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base_cuda = torch.cuda.memory_allocated()
step(); sync()
mem = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if dev == "cuda" else rss_mb() - base
times = []
for _ in range(cfg["repeats"]):
    sync(); t = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"time_s": statistics.median(times), "mem_mb": mem}))
"""


def run_case(case: dict, timeout: float) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", CASE_SCRIPT, json.dumps(case)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f}s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    err = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": err[:200]}


def exponent(a: float, b: float, la: int, lb: int) -> float:
    return math.log(b / a) / math.log(lb / la) if a > 0 and b > 0 else float("nan")


def write_report(rows: list[dict], args: argparse.Namespace, out: Path, wall: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    device = args.device
    if device == "cpu":
        device_desc = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    else:
        import torch
        device_desc = torch.cuda.get_device_name()
    lines = [
        f"# Benchmark: {', '.join(args.mixers)}",
        "",
        f"Command: `python scripts/bench.py {' '.join(sys.argv[1:])}`  ",
        f"Device: {device_desc}; dtype {args.dtype}; d={args.d}, batch={args.batch}; "
        f"median of {args.repeats} forward+backward passes; wall time {wall:.0f} s; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| mixer | backend | L | fwd+bwd (ms) | time exponent | peak mem (MB) | mem exponent |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['backend']} | {r['L']} | {r['error']} | | | |")
            continue
        te = "" if r.get("t_exp") is None else f"{r['t_exp']:.2f}"
        me = "" if r.get("m_exp") is None else f"{r['m_exp']:.2f}"
        lines.append(f"| {r['label']} | {r['backend']} | {r['L']} | {1000 * r['time_s']:.1f} | "
                     f"{te} | {r['mem_mb']:.1f} | {me} |")
    lines += ["", "Exponents are log(t2/t1)/log(L2/L1) against the previous length: 1 = linear, "
              "2 = quadratic.", ""]
    try:
        plot(rows, out.with_suffix(".png"))
        lines.append(f"![time and memory vs length]({out.with_suffix('.png').name})")
    except ImportError:
        lines.append("(matplotlib is not installed: no plot)")
    out.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if "error" not in r:
            series.setdefault((r["label"], r["backend"]), []).append(r)
    for (label, backend), rs in series.items():
        Ls = [r["L"] for r in rs]
        axes[0].plot(Ls, [1000 * r["time_s"] for r in rs], "o-", label=f"{label} ({backend})")
        axes[1].plot(Ls, [max(r["mem_mb"], 1e-1) for r in rs], "o-", label=f"{label} ({backend})")
    for ax, ylabel in zip(axes, ["forward+backward (ms)", "peak memory (MB)"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mixers", nargs="+", required=True,
                   help="registry names; NAME:key=value,key=value passes mixer options")
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    p.add_argument("--backends", nargs="+", default=["ref"], choices=["ref", "auto", "kernel"])
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per case")
    p.add_argument("--out", type=Path, default=Path("docs/bench.md"))
    p.add_argument("--json", type=Path, default=None, help="also write the raw rows as JSON")
    args = p.parse_args(argv)

    import lrm  # noqa: F401  (fail early on an unknown mixer name)
    from lrm import registry

    rows, t_start = [], time.time()
    for spec in args.mixers:
        name, _, opts = spec.partition(":")
        registry.canonical(name)
        kwargs = dict(_parse_opt(o) for o in opts.split(",") if o)
        for backend in args.backends:
            prev = None
            for L in args.lengths:
                case = dict(mixer=name, kwargs=kwargs, backend=backend, L=L, d=args.d,
                            batch=args.batch, dtype=args.dtype, device=args.device,
                            repeats=args.repeats, threads=args.threads)
                res = run_case(case, args.timeout)
                row = {"label": spec, "backend": backend, "L": L, **res}
                if prev is not None and "error" not in row and "error" not in prev:
                    row["t_exp"] = exponent(prev["time_s"], row["time_s"], prev["L"], L)
                    row["m_exp"] = exponent(prev["mem_mb"], row["mem_mb"], prev["L"], L)
                shown = (f"{1000 * row['time_s']:.1f} ms, {row['mem_mb']:.1f} MB"
                         if "error" not in row else row["error"])
                print(f"{spec:>16s} {backend:>6s} L={L:<6d} {shown}", flush=True)
                rows.append(row)
                prev = row
    write_report(rows, args, args.out, time.time() - t_start)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


def _parse_opt(opt: str) -> tuple[str, object]:
    key, _, val = opt.partition("=")
    try:
        return key, json.loads(val)
    except json.JSONDecodeError:
        return key, val


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
