"""Our Titans neural memory against titans-pytorch's ``NeuralMemory`` (lucidrains, the peer users
know; pure PyTorch, runs on CPU): output parity where the two can be configured to compute the
same thing, and forward+backward time and peak memory at matched sizes, in one run.

    python scripts/bench_titans_vs_peer.py --out docs/bench/titans.md

Parity (float64): titans-pytorch with chunk_size=1 and batch_size=1 (the weights are updated
after every token) and no pre-norm, no LayerNorm+residual around the memory, one head, is the
sequential rule; our op with chunk_size=1 gets its q, k, v, θ (divided by the width: its loss
is a mean over features, ours a sum), η and α and its initial weights, and must give the same
outputs. At chunk_size > 1 the two algorithms differ (see docs/bench/titans.md); the script
prints how much.

Speed: the bare modules, our ``lrm.mixer("titans", variant="lmm")`` and titans-pytorch's
``NeuralMemory``, with the same width, heads, head width, memory MLP (depth 2, expansion 2)
and chunk size; the peer in its default form (batch_size=None: every chunk's gradient is taken
at the weights the call started with) and with batch_size = chunk_size (gradients at each
chunk's start, as in the paper and in ours). Median of ``--repeats`` forward+backward passes
after a warm-up, one fresh subprocess per case, peak memory as the growth of the peak RSS
(CPU) or ``max_memory_allocated`` (CUDA).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

BEGIN, END = "<!-- peer-comparison:begin -->", "<!-- peer-comparison:end -->"

CASE = r"""
import json, resource, statistics, sys, time
import torch
import lrm
cfg = json.loads(sys.argv[1])
if cfg["threads"]:
    torch.set_num_threads(cfg["threads"])
dev = cfg["device"]
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg["dtype"]]
torch.manual_seed(0)
d, H, K, C = cfg["d"], cfg["heads"], cfg["head_dim"], cfg["chunk"]
if cfg["impl"].startswith("lrm"):
    m = lrm.mixer("titans", d, variant="lmm", n_heads=H, head_dim=K, depth=2, expansion=2.0,
                  chunk_size=C, d_conv=0 if cfg["impl"] == "lrm_noconv" else 4)
    fwd = lambda x: m(x)[0]
else:
    from titans_pytorch import NeuralMemory
    m = NeuralMemory(d, chunk_size=C, heads=H, dim_head=K,
                     batch_size=C if cfg["impl"] == "peer_batch" else None,
                     default_model_kwargs=dict(depth=2, expansion_factor=2.0))
    fwd = lambda x: m(x)[0]
m = m.to(dev, dtype)
x = torch.randn(cfg["batch"], cfg["L"], d, device=dev, dtype=dtype, requires_grad=True)
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
def step():
    fwd(x).float().square().mean().backward()
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

IMPLS = {"lrm": "lrm `titans` (lmm)", "lrm_noconv": "lrm `titans` (lmm), d_conv=0",
         "peer": "titans-pytorch, default (batch_size=None)",
         "peer_batch": "titans-pytorch, batch_size=chunk"}


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


def parity() -> list[str]:
    """Max |ours − theirs| in float64 where the two compute the same thing, and the size of
    the difference where they do not."""
    import torch
    from titans_pytorch import NeuralMemory

    from lrm.ops.neural_memory import initial_state, neural_memory_ref

    lines = ["| memory | peer config | our chunk_size | max abs difference | max abs output |",
             "|---|---|---|---|---|"]
    dim, T = 16, 48
    for depth in (1, 2):
        for peer_chunk, peer_batch, ours_c in ((1, 1, 1), (8, None, 8), (8, 8, 8)):
            torch.manual_seed(depth)
            nm = NeuralMemory(dim, chunk_size=peer_chunk, batch_size=peer_batch, heads=1,
                              pre_rmsnorm=False, mem_model_norm_add_residual=False,
                              default_model_kwargs=dict(depth=depth, expansion_factor=2.0)
                              ).double()
            x = torch.randn(1, T, dim, dtype=torch.float64)
            with torch.no_grad():
                theirs, _ = nm(x)
                q, k, v = (p(x)[:, :, None] for p in (nm.to_queries, nm.to_keys, nm.to_values))
                theta = nm.adaptive_step_transform(nm.to_adaptive_step[0](x)) / dim
                eta, alpha = (p[0](x).sigmoid() for p in (nm.to_momentum, nm.to_decay_factor))
                ours, _ = neural_memory_ref(q, k, v, theta, eta, alpha,
                                            initial_state(list(nm.memory_model_parameters), 1),
                                            chunk_size=ours_c)
            diff = (ours[:, :, 0] - theirs).abs().max().item()
            kind = "linear" if depth == 1 else "MLP (depth 2)"
            lines.append(f"| {kind} | chunk_size={peer_chunk}, batch_size={peer_batch} | "
                         f"{ours_c} | {diff:.1e} | {theirs.abs().max().item():.2f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--no-parity", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    t0 = time.time()
    par = [] if args.no_parity else parity()
    print("\n".join(par), flush=True)
    head = " | ".join(f"{IMPLS[i]} (ms / MB)" for i in args.impls)
    others = [i for i in args.impls if i != "lrm"]
    ratios = " | ".join(f"time {IMPLS[i]} / ours" for i in others)
    lines = [f"| L | {head} | {ratios} |",
             "|---|" + "---|" * (len(args.impls) + len(others))]
    for L in args.lengths:
        res = {}
        for impl in args.impls:
            case = dict(impl=impl, L=L, d=args.d, heads=args.heads, head_dim=args.head_dim,
                        chunk=args.chunk, batch=args.batch, dtype=args.dtype,
                        repeats=args.repeats, threads=args.threads, device=args.device)
            res[impl] = run(case, args.timeout)
            print(L, impl, res[impl], flush=True)

        def cell(r):
            return r["error"] if "error" in r else f"{1000 * r['time_s']:.0f} / {r['mem_mb']:.0f}"

        ours = res.get("lrm", {})
        rat = " | ".join(
            f"{res[i]['time_s'] / ours['time_s']:.2f}" if "error" not in res[i]
            and "time_s" in ours else "" for i in others)
        lines.append(f"| {L} | " + " | ".join(cell(res[i]) for i in args.impls) + f" | {rat} |")
    wall = time.time() - t0
    cmd = "python scripts/bench_titans_vs_peer.py " + " ".join(sys.argv[1:])
    from importlib.metadata import version

    import titans_pytorch  # noqa: F401
    section = "\n".join([
        BEGIN, "", "## lrm `titans` memory vs titans-pytorch `NeuralMemory` (same run)", "",
        f"Command: `{cmd}`  ",
        f"titans-pytorch {version('titans-pytorch')}; device: {args.device} "
        f"({platform.machine()}), {args.threads or 'default'} thread(s); {args.dtype}; "
        f"d={args.d}, {args.heads} heads of {args.head_dim}, memory MLP depth 2, expansion 2, "
        f"chunk {args.chunk}, batch {args.batch}; median of {args.repeats} forward+backward "
        f"passes; wall {wall:.0f} s; {time.strftime('%Y-%m-%d')}.", "",
        *(["### Output parity (float64, T=48, width 16, one head)", "", *par, ""] if par
          else []),
        "### Forward+backward time and peak memory", "",
        *lines, "", END, ""])
    print(section)
    if args.out is not None:
        text = args.out.read_text() if args.out.exists() else ""
        if BEGIN in text and END in text:
            head_, rest = text.split(BEGIN, 1)
            text = head_ + section + rest.split(END, 1)[1].lstrip("\n")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
