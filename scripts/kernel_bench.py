"""Kernel vs pure-PyTorch reference on a CUDA GPU: parity and speed of every dispatching op.

    python scripts/kernel_bench.py --out kernel_bench.json      # needs a CUDA GPU

For each op that lrm dispatches to a kernel package (``lrm/ops/_kernels.py``) and each
sequence length T, it draws fresh random inputs and reports

- parity: ``||kernel - ref|| / ||ref||`` of the output and of every input gradient (fp32
  inputs; TF32 off for the reference during this check, so the error is the kernel's), and
- speed: the median time of forward + backward (events, after warm-up) of ``backend="ref"``
  and ``backend="kernel"`` on the same inputs, with TF32 allowed for both. Up to ``--reps``
  repetitions, fewer where one call is slow (``--budget`` seconds per case and backend; at
  least 3); each row records its own (``ref_reps``, ``kernel_reps``).

Progress goes to stderr as it happens (which case, which backend, how long the first call
took to compile), so a process killed by its timeout shows where it was.

Where fla refuses a kernel's backward on this GPU (``_kernels.fla_gated_bwd_blocked``: the gated
delta rule on Hopper with Triton < 3.7.1 and no tilelang), the row is the forward alone, and
its ``forward_only`` field gives the reason.

An op whose kernel does not import is listed with the reason and skipped; nothing is faked.
The numbers of a run are in ``docs/kernels.md`` with the device named.

    python scripts/kernel_bench.py --dry-run --jsonl rows.jsonl    # on a CPU, before a GPU run

``--dry-run`` exercises everything but the kernels, on the CPU at T = 64: inputs, the reference
forward and backward, the parity and timing code and the output files. The "kernel" side is the
reference again (so the errors are 0 and the speedup about 1), and every row says ``dry_run``.
``--jsonl`` appends each row to a file as one JSON line the moment it is measured, so several
processes (one op each, as ``scripts/device/sweep.sh`` runs them) can share one results file.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrm.ops import _kernels
from lrm.ops.causal_conv import causal_conv1d
from lrm.ops.delta_rule import gated_delta_rule, gdn2
from lrm.ops.forgetting_attn import forgetting_attn
from lrm.ops.selective_scan import selective_scan
from lrm.ops.ssd import ssd

B, H, D = 2, 8, 64  # batch, heads, head width of the attention-like ops
DEVICE = "cuda"  # "cpu" under --dry-run
START = time.perf_counter()


def inputs(op: str, T: int, gen: torch.Generator) -> tuple[list[torch.Tensor], dict]:
    """Fresh fp32 CUDA inputs (the differentiable ones first) and fixed keyword options."""
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    if op == "gated_delta_rule":
        t = [r(B, T, H, D), F.normalize(r(B, T, H, D), dim=-1), r(B, T, H, D),
             F.logsigmoid(r(B, T, H) + 2.0), torch.rand(B, T, H, generator=gen)]
        kw = {}
    elif op == "gdn2":
        t = [r(B, T, H, D), F.normalize(r(B, T, H, D), dim=-1), r(B, T, H, D),
             F.logsigmoid(r(B, T, H, D) + 2.0), torch.rand(B, T, H, D, generator=gen),
             torch.rand(B, T, H, D, generator=gen)]
        kw = {}
    elif op == "forgetting_attn":
        t = [r(B, T, H, D), r(B, T, H, D), r(B, T, H, D), F.logsigmoid(r(B, T, H) + 3.0)]
        kw = {}
    elif op == "ssd":  # Mamba-2 at d_model 512: 16 heads of 64, N = 64, one group
        Hs, P, N = 16, 64, 64
        t = [r(B, T, Hs, P), F.softplus(r(B, T, Hs) - 3.0), -torch.rand(Hs, generator=gen) - 0.5,
             r(B, T, 1, N), r(B, T, 1, N)]
        kw = {"chunk_size": 256}
    elif op == "selective_scan":  # Mamba-1 at d_model 512: d_inner 1024, N = 16
        Di, N = 1024, 16
        t = [r(B, Di, T), F.softplus(r(B, Di, T) - 3.0), -torch.rand(Di, N, generator=gen) - 0.5,
             r(B, N, T), r(B, N, T)]
        kw = {}
    elif op == "causal_conv1d":
        t = [r(B, 1024, T), r(1024, 4) / 2, r(1024)]
        kw = {"activation": "silu"}
    else:
        raise KeyError(op)
    return [x.to(DEVICE).requires_grad_() for x in t], kw


def call(op: str, args: list[torch.Tensor], kw: dict, backend: str) -> torch.Tensor:
    if op == "gated_delta_rule":
        return gated_delta_rule(*args, backend=backend)[0]
    if op == "gdn2":
        return gdn2(*args, backend=backend)[0]
    if op == "forgetting_attn":
        return forgetting_attn(*args, backend=backend)
    if op == "ssd":
        x, dt, A, Bm, Cm = args
        return ssd(x, dt, A, Bm, Cm, kw["chunk_size"], backend=backend)
    if op == "selective_scan":
        return selective_scan(*args, backend=backend)
    if op == "causal_conv1d":
        return causal_conv1d(*args, kw["activation"], backend=backend)[0]
    raise KeyError(op)


KERNEL_OF = {"gated_delta_rule": "chunk_gated_delta_rule", "gdn2": "chunk_gdn2",
             "forgetting_attn": "parallel_forgetting_attn", "ssd": "mamba_chunk_scan_combined",
             "selective_scan": "selective_scan_fn", "causal_conv1d": "causal_conv1d_fn"}


def fwd_bwd(op: str, args: list[torch.Tensor], kw: dict, backend: str, gout: torch.Tensor
            ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    out = call(op, args, kw, backend)
    grads = torch.autograd.grad(out, args, gout, allow_unused=True)
    return out, grads


def rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        return float("nan")
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], reps: int, budget_s: float) -> tuple[float, int]:
    """Median milliseconds of ``fn`` and the repetitions timed. Where one call is slow (Mamba's
    reference scan at T = 16384 takes seconds), fewer repetitions fit ``budget_s``; at least 3."""
    t0 = time.perf_counter()
    fn()  # the first call compiles and autotunes a Triton kernel: not timed
    sync()
    t1 = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - t1
    reps = min(reps, max(3, int(budget_s / max(once, 1e-6))))  # at least 3, unless asked fewer
    log(f"  warm-up {t1 - t0:.1f} s, then {once * 1e3:.1f} ms a call: timing {reps}")
    times = []
    if DEVICE == "cpu":  # the dry run: wall-clock time, no CUDA events
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times), reps
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times), reps


def log(msg: str) -> None:
    """Progress on stderr, flushed: a process killed by its timeout shows where it was."""
    print(f"[{time.perf_counter() - START:6.1f} s] {msg}", file=sys.stderr, flush=True)


def fwd_only(op: str, args: list[torch.Tensor], kw: dict, backend: str, gout: torch.Tensor
             ) -> tuple[torch.Tensor, tuple[()]]:
    with torch.no_grad():
        return call(op, args, kw, backend), ()


def bwd_blocked(op: str) -> str | None:
    """Why the kernel's backward may not run here (fla's own guard, copied by lrm), if so."""
    if op != "gated_delta_rule" or DEVICE != "cuda":
        return None
    return _kernels.fla_gated_bwd_blocked()


def bench(op: str, T: int, reps: int, seed: int, kernel: str = "kernel",
          budget_s: float = 8.0) -> dict:
    """One row: parity and speed of ``backend=kernel`` against ``backend="ref"``; forward only
    (and said so in the row) where the kernel's backward is blocked on this machine."""
    gen = torch.Generator().manual_seed(seed)
    args, kw = inputs(op, T, gen)
    with torch.no_grad():
        gout = torch.randn(call(op, args, kw, "ref").shape, generator=gen).to(DEVICE)
    blocked = bwd_blocked(op)
    step = fwd_only if blocked else fwd_bwd
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    log(f"{op} T={T}: parity, reference")
    o_r, g_r = step(op, args, kw, "ref", gout)
    log(f"{op} T={T}: parity, {kernel} (its first call compiles)")
    o_k, g_k = step(op, args, kw, kernel, gout)
    finite = bool(torch.isfinite(o_k).all()) and all(
        g is None or bool(torch.isfinite(g).all()) for g in g_k)
    errs = [rel(o_k, o_r)] + [rel(a, b) for a, b in zip(g_k, g_r, strict=True)]
    del o_r, g_r, o_k, g_k
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    row = {"op": op, "T": T, "finite": finite, "out_rel_err": errs[0],
           "max_grad_rel_err": max((e for e in errs[1:] if not math.isnan(e)), default=None)}
    if blocked:
        row["forward_only"] = blocked
    for name, backend in (("ref", "ref"), ("kernel", kernel)):
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        log(f"{op} T={T}: timing {name}")
        row[f"{name}_ms"], row[f"{name}_reps"] = median_ms(
            lambda b=backend: step(op, args, kw, b, gout), reps, budget_s)
        row[f"{name}_peak_mb"] = (torch.cuda.max_memory_allocated() / 2**20
                                  if DEVICE == "cuda" else float("nan"))
    row["speedup"] = row["ref_ms"] / row["kernel_ms"]
    return row


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)"


def append_line(path: str | None, row: dict) -> None:
    """One JSON line, appended and flushed at once (a killed process keeps what it wrote)."""
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**row, "device": device_name(), "torch": torch.__version__})
                    + "\n")


def save(path: str | None, rows: list[dict], skipped: dict[str, str]) -> None:
    if path:
        Path(path).write_text(json.dumps({"device": device_name(),
                                          "torch": torch.__version__, "rows": rows,
                                          "skipped": skipped}, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--ops", nargs="+", default=list(KERNEL_OF),
                    help="ops to time, each against its kernel")
    ap.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384],
                    help="sequence lengths T")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per case")
    ap.add_argument("--budget", type=float, default=8.0,
                    help="seconds of timing per case and backend: a slow call gets fewer "
                         "repetitions (at least 3); each row records its own")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--jsonl", default=None, help="append every row to this file as it comes")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU at T=64, the reference standing in for the kernel")
    args = ap.parse_args(argv)
    global DEVICE
    kernel = "kernel"
    if args.dry_run:
        DEVICE, kernel, args.lengths, args.reps = "cpu", "ref", [64], min(args.reps, 2)
    elif not torch.cuda.is_available():
        raise SystemExit("kernel_bench.py needs a CUDA GPU (the kernels are CUDA/Triton only); "
                         "--dry-run checks the script on a CPU")
    unknown = sorted(set(args.ops) - set(KERNEL_OF))
    if unknown:
        raise SystemExit(f"unknown op(s) {unknown}; valid: {', '.join(KERNEL_OF)}")
    rows, skipped = [], {}
    for op in args.ops:
        if not args.dry_run and _kernels.get(KERNEL_OF[op]) is None:
            skipped[op] = _kernels._IMPORT_ERRORS.get(KERNEL_OF[op], "?")
            print(f"{op}: kernel unavailable ({skipped[op]})", flush=True)
            append_line(args.jsonl, {"op": op, "skipped": skipped[op]})
            continue
        for i, T in enumerate(args.lengths):
            try:
                row = bench(op, T, args.reps, args.seed + i, kernel, args.budget)
            except Exception as err:  # one failing op must not hide the others
                row = {"op": op, "T": T, "error": f"{type(err).__name__}: {err}"[:400]}
            if args.dry_run:
                row["dry_run"] = True
            rows.append(row)
            print(json.dumps(row), flush=True)
            append_line(args.jsonl, row)
            save(args.out, rows, skipped)  # after every row: a killed run keeps what it measured
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    dev = device_name()
    print(f"\n{dev}, torch {torch.__version__}, fp32 inputs, fwd+bwd, median of up to "
          f"{args.reps} (fewer where one call is slow: --budget)\n")
    print("| op | T | out rel err | max grad rel err | ref ms | kernel ms | speedup "
          "| ref / kernel peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['op']} | {r['T']} | error: {r['error'][:80]} | | | | | |")
            continue
        grad = ("forward only" if r.get("forward_only") else
                f"{r['max_grad_rel_err']:.1e}" if r["max_grad_rel_err"] is not None else "–")
        print(f"| {r['op']} | {r['T']} | {r['out_rel_err']:.1e} | {grad} "
              f"| {r['ref_ms']:.2f} | {r['kernel_ms']:.2f} | {r['speedup']:.1f}x "
              f"| {r['ref_peak_mb']:.0f} / {r['kernel_peak_mb']:.0f} |")
    for op, why in skipped.items():
        print(f"| {op} | – | kernel unavailable: {why[:100]} | | | | | |")
    save(args.out, rows, skipped)


if __name__ == "__main__":
    main()
