"""Forward+backward time and peak memory of mixers across sequence lengths and backends.

    python scripts/bench.py --mixers attention fox --lengths 1024 2048 4096 8192 \
        --d 256 --batch 1 --backends ref --out docs/bench/fox.md
    python scripts/bench.py --peers --mixers mamba mamba2 gdn fox titans --lengths 2048 \
        --threads 1 --out docs/bench/peers.md

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


def run_case(case: dict, timeout: float, script: str = CASE_SCRIPT) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", script, json.dumps(case)],
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
    p.add_argument("--peers", action="store_true",
                   help="one table per op (--mixers among mamba, mamba2, gdn, fox, titans): "
                        "lrm beside mambapy, fla's naive references, SDPA, titans-pytorch")
    p.add_argument("--heads", type=int, default=4, help="heads of the op-level peers")
    args = p.parse_args(argv)
    if args.peers:
        run_peers(args)
        return

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


# ----------------------------------------------------------------------------- --peers
#
# One table per op: lrm's CPU path beside the pure-PyTorch peers at matched sizes, every case in
# its own subprocess, the cases of one length run one after the other (so a noisy machine hits
# both sides alike). Effective bandwidth = the compulsory traffic of a forward+backward pass
# (read every input and write its gradient, write every output and read its gradient, once)
# divided by the time, against the machine's copy bandwidth measured in the same run.

PEER_SCRIPT = r"""
import json, resource, statistics, sys, time
import torch
import torch.nn.functional as F
cfg = json.loads(sys.argv[1])
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
L, d, B = cfg["L"], cfg["d"], cfg["batch"]
H, Dh = cfg["heads"], d // cfg["heads"]
impl = cfg["impl"]
def leaf(*s):
    return torch.randn(*s, requires_grad=True)
def fla_naive(op):
    # fla's naive references import only torch and einops, but importing the fla package
    # needs Triton: load the one file by path
    import importlib.util, pathlib
    spec = importlib.util.find_spec("fla")
    if spec is None:
        raise ModuleNotFoundError("No module named 'fla'")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "ops" / op / "naive.py"
    mod_spec = importlib.util.spec_from_file_location(f"fla_naive_{op}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod
if impl in ("lrm mamba", "lrm mamba2"):
    import lrm
    kw = {"d_state": 16} if impl == "lrm mamba" else {"d_state": 64, "head_dim": 64,
                                                       "chunk_size": 64}
    m = lrm.mixer(impl.split()[1], d, **kw)
    xs = [leaf(B, L, d)]
    fwd = lambda x: m(x)[0]
elif impl == "mambapy Mamba":
    from mambapy.mamba import MambaBlock, MambaConfig
    m = MambaBlock(MambaConfig(d_model=d, n_layers=1, d_state=16))
    xs = [leaf(B, L, d)]
    fwd = m
elif impl == "mambapy Mamba2":
    from mambapy.mamba2 import Mamba2Block, Mamba2Config
    m = Mamba2Block(Mamba2Config(d_model=d, n_layers=1, d_head=64, d_state=64))
    m.config.chunk_size = 64
    xs = [leaf(B, L, d)]
    fwd = m
elif impl in ("lrm gated_delta_rule", "fla naive_chunk_gated_delta_rule"):
    q, k, v = leaf(B, L, H, Dh), leaf(B, L, H, Dh), leaf(B, L, H, Dh)
    g, beta = leaf(B, L, H), leaf(B, L, H)
    xs = [q, k, v, g, beta]
    if impl.startswith("lrm"):
        from lrm.ops.delta_rule import gated_delta_rule as op
    else:
        op = fla_naive("gated_delta_rule").naive_chunk_gated_delta_rule
    fwd = lambda q, k, v, g, beta: op(q, F.normalize(k, dim=-1), v, F.logsigmoid(g),
                                      beta.sigmoid())[0]
elif impl in ("lrm forgetting_attn", "torch SDPA (causal softmax)",
              "fla naive_forgetting_attn"):
    q, k, v, g = leaf(B, L, H, Dh), leaf(B, L, H, Dh), leaf(B, L, H, Dh), leaf(B, L, H)
    xs = [q, k, v, g]
    if impl.startswith("lrm"):
        from lrm.ops.forgetting_attn import forgetting_attn
        fwd = lambda q, k, v, g: forgetting_attn(q, k, v, F.logsigmoid(g))
    elif impl.startswith("fla"):
        naive_forgetting_attn = fla_naive("forgetting_attn").naive_forgetting_attn
        fwd = lambda q, k, v, g: naive_forgetting_attn(q, k, v, F.logsigmoid(g))
    else:
        fwd = lambda q, k, v, g: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
elif impl == "titans-pytorch NeuralMemory":
    from titans_pytorch import NeuralMemory
    m = NeuralMemory(dim=d, chunk_size=64)
    xs = [leaf(B, L, d)]
    fwd = lambda x: m(x)[0]
else:
    raise SystemExit(f"unknown impl {impl}")
params = list(m.parameters()) if "m" in dir() else []
def step():
    y = fwd(*xs)
    y.square().mean().backward()
    for t in xs + params:
        t.grad = None
    return y
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss()
y = step()
mem = rss() - base
ts = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
nbytes = 2 * (sum(t.numel() for t in xs + params) + y.numel()) * 4
print("RESULT " + json.dumps({"time_s": statistics.median(ts), "mem_mb": mem,
                              "bytes": nbytes}))
"""

PEERS = {  # op -> the implementations compared, lrm's first
    "mamba": ["lrm mamba", "mambapy Mamba"],
    "mamba2": ["lrm mamba2", "mambapy Mamba2"],
    "gdn": ["lrm gated_delta_rule", "fla naive_chunk_gated_delta_rule"],
    "fox": ["lrm forgetting_attn", "torch SDPA (causal softmax)", "fla naive_forgetting_attn"],
    "titans": ["titans-pytorch NeuralMemory"],
}
WHAT = {
    "mamba": "the whole mixer (d_state 16), forward+backward, x of shape (B, L, d)",
    "mamba2": "the whole mixer (d_state 64, head_dim 64, chunk 64), x of shape (B, L, d)",
    "gdn": "the op: q, k, v (B, L, H, d/H), gates (B, L, H); k L2-normalised inside",
    "fox": "the op: q, k, v (B, L, H, d/H), forget-gate logits (B, L, H)",
    "titans": "titans-pytorch's NeuralMemory (a peer only: lrm has no Titans mixer yet)",
}


def copy_bandwidth(threads: int, mib: int = 256) -> float:
    """GB/s of ``y.copy_(x)`` on a ``mib`` MiB fp32 tensor (read + write), best of 5."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(mib * 2**18)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        y.copy_(x)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * 4 / best / 1e9


def run_peers(args: argparse.Namespace) -> None:
    t0 = time.time()
    bw = copy_bandwidth(args.threads)
    print(f"copy bandwidth: {bw:.1f} GB/s", flush=True)
    sections = []
    for op in args.mixers:
        if op not in PEERS:
            raise SystemExit(f"--peers knows {sorted(PEERS)}, not {op!r}")
        lines = [f"## {op}", "", f"Measured: {WHAT[op]}.", "",
                 "| L | implementation | fwd+bwd (ms) | time / lrm | peak mem (MB) | "
                 "mem / lrm | effective GB/s | % of copy bandwidth |",
                 "|---|---|---|---|---|---|---|---|"]
        for L in args.lengths:
            first = None
            for impl in PEERS[op]:
                case = dict(impl=impl, L=L, d=args.d, batch=args.batch, heads=args.heads,
                            repeats=args.repeats, threads=args.threads)
                r = run_case(case, args.timeout, script=PEER_SCRIPT)
                if "error" in r:
                    why = r["error"]
                    if "No module named" in why:
                        why = f"not installed ({why.split('No module named')[-1].strip()})"
                    lines.append(f"| {L} | {impl} | {why} | | | | | |")
                    print(f"{op:>8s} L={L:<6d} {impl}: {why}", flush=True)
                    continue
                first = first or (r if impl.startswith("lrm") else None)
                rel_t = f"{r['time_s'] / first['time_s']:.2f}" if first else ""
                rel_m = (f"{r['mem_mb'] / first['mem_mb']:.2f}"
                         if first and first["mem_mb"] > 0 else "")
                gbs = r["bytes"] / r["time_s"] / 1e9
                lines.append(f"| {L} | {impl} | {1000 * r['time_s']:.0f} | {rel_t} | "
                             f"{r['mem_mb']:.0f} | {rel_m} | {gbs:.2f} | "
                             f"{100 * gbs / bw:.1f} |")
                print(f"{op:>8s} L={L:<6d} {impl}: {1000 * r['time_s']:.0f} ms, "
                      f"{r['mem_mb']:.0f} MB", flush=True)
        sections.append("\n".join(lines))
    head = [
        f"# Peers: {', '.join(args.mixers)}", "",
        f"Command: `python scripts/bench.py {' '.join(sys.argv[1:])}`  ",
        f"Device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"threads {args.threads or 'default'}; fp32; d={args.d}, heads={args.heads}, "
        f"batch={args.batch}; median of {args.repeats} forward+backward passes after a "
        f"warm-up; copy bandwidth {bw:.1f} GB/s (best of 5 copies of a 256 MiB tensor); "
        f"wall {time.time() - t0:.0f} s; {time.strftime('%Y-%m-%d')}.", "",
        "Memory is the growth of the process's peak resident set during the first pass. "
        "Effective bandwidth counts only the compulsory traffic (inputs, parameters and "
        "outputs, and their gradients, once each), so it is a floor on the real traffic; its "
        "share of the copy bandwidth says how far an op is from being memory-bound.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(head) + "\n" + "\n\n".join(sections) + "\n")
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
