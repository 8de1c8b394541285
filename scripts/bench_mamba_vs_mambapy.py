"""Our Mamba-1 mixer against mambapy's ``MambaBlock`` (the pure-PyTorch Mamba of alxndrTL's
mamba.py, a Blelloch parallel scan over (B, L, d_in, N) tensors), same weights, same sizes, same
run, measured the way ``scripts/bench.py`` measures: forward+backward of the bare block, median
of ``--repeats`` passes after a warm-up, one fresh subprocess per case, peak memory as the growth
of the process's peak RSS (CPU) or ``max_memory_allocated`` (CUDA).

    python scripts/bench_mamba_vs_mambapy.py --lengths 1024 2048 4096 8192 16384 \
        --out docs/bench/mamba.md

The table is written into ``--out`` between two marker comments (replacing an earlier one, or
appended), so run it after ``scripts/bench.py ... --out docs/bench/mamba.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# With MALLOC_MMAP_THRESHOLD_ set, glibc returns large blocks to the OS at once, so the peak RSS
# is the live peak rather than what the heap kept; such a run gets its own section.
MMAP = os.environ.get("MALLOC_MMAP_THRESHOLD_")
TAG = "mambapy-comparison" + ("-mmap" if MMAP else "")
BEGIN, END = f"<!-- {TAG}:begin -->", f"<!-- {TAG}:end -->"

CASE = r"""
import json, resource, statistics, sys, time
import torch
import lrm
cfg = json.loads(sys.argv[1])
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
dev = cfg["device"]
torch.manual_seed(0)
if cfg["impl"] == "mambapy":
    from mambapy.mamba import MambaBlock, MambaConfig
    m = MambaBlock(MambaConfig(d_model=cfg["d"], n_layers=1, d_state=cfg["d_state"]))
    fwd = lambda x: m(x)
else:
    m = lrm.mixer("mamba", cfg["d"], d_state=cfg["d_state"])
    fwd = lambda x: m(x)[0]
m = m.to(dev)
x = torch.randn(cfg["batch"], cfg["L"], cfg["d"], device=dev, requires_grad=True)
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
def step():
    fwd(x).square().mean().backward()
    m.zero_grad(set_to_none=True)
    x.grad = None
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
if dev == "cuda":
    torch.cuda.reset_peak_memory_stats(); base_cuda = torch.cuda.memory_allocated()
step(); sync()
mem = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if dev == "cuda" else rss() - base
ts = []
for _ in range(cfg["repeats"]):
    sync(); t = time.perf_counter(); step(); sync(); ts.append(time.perf_counter() - t)
print("RESULT " + json.dumps({"time_s": statistics.median(ts), "mem_mb": mem}))
"""


def run(case: dict, timeout: float) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", CASE, json.dumps(case)], capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f}s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:160]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    t0 = time.time()
    lines = ["| L | lrm mamba (ms) | mambapy (ms) | time ratio mambapy/lrm | lrm mem (MB) | "
             "mambapy mem (MB) | mem ratio |", "|---|---|---|---|---|---|---|"]
    for L in args.lengths:
        res = {}
        for impl in ("lrm", "mambapy"):
            case = dict(impl=impl, L=L, d=args.d, d_state=args.d_state, batch=args.batch,
                        repeats=args.repeats, threads=args.threads, device=args.device)
            res[impl] = run(case, args.timeout)
            print(L, impl, res[impl], flush=True)
        a, b = res["lrm"], res["mambapy"]

        def ms(r):
            return r["error"] if "error" in r else f"{1000 * r['time_s']:.0f}"

        def mb(r):
            return "" if "error" in r else f"{r['mem_mb']:.0f}"

        ok = "error" not in a and "error" not in b
        tr = f"{b['time_s'] / a['time_s']:.2f}" if ok else ""
        mr = f"{b['mem_mb'] / a['mem_mb']:.1f}" if ok and a["mem_mb"] > 0 else ""
        lines.append(f"| {L} | {ms(a)} | {ms(b)} | {tr} | {mb(a)} | {mb(b)} | {mr} |")
    wall = time.time() - t0
    cmd = "python scripts/bench_mamba_vs_mambapy.py " + " ".join(sys.argv[1:])
    if MMAP:
        cmd = f"MALLOC_MMAP_THRESHOLD_={MMAP} {cmd}"
    title = "## lrm `mamba` vs mambapy (same run, same sizes)" + (
        ", live memory (glibc mmap threshold set; times not comparable)" if MMAP else "")
    section = "\n".join([
        BEGIN, "", title, "",
        f"Command: `{cmd}`  ",
        f"Device: {args.device} ({platform.machine()}); fp32; d={args.d}, d_state="
        f"{args.d_state}, batch={args.batch}; median of {args.repeats} forward+backward "
        f"passes; wall {wall:.0f} s; {time.strftime('%Y-%m-%d')}.", "",
        *lines, "", END, ""])
    print(section)
    if args.out is not None:
        text = args.out.read_text() if args.out.exists() else ""
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + section + rest.split(END, 1)[1].lstrip("\n")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
