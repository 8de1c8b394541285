"""Speed and memory of lrm's mixers: one script, one mode per question.

    python scripts/bench.py --mixers attention fox --lengths 1024 2048 4096 8192
    python scripts/bench.py peers --mixers mamba gdn fox titans --lengths 2048 --threads 1
    python scripts/bench.py decode --mixers attention landmark:retrieval_topk=4
    python scripts/bench.py decode --whole-model --mixers attention gdn mamba2
    python scripts/bench.py compile --mixers mamba2 gdn --lengths 2048 --d 128
    python scripts/bench.py train-step --mixers attention gdn --lengths 128 512
    python scripts/bench.py train-step --interleaved --mixers mamba2 mamba2:lean --lengths 128
    python scripts/bench.py ops --ops ssd delta --d 32 64 --lengths 128 512 --chunks 16 32

Modes (``scaling`` when none is named):

- ``scaling``: forward+backward time and peak memory of the bare mixer against the sequence
  length, per backend, with growth exponents log(t2/t1)/log(L2/L1) between consecutive lengths
  (~1 linear, ~2 quadratic) and a log-log plot.
- ``peers``: lrm beside the pure-PyTorch peers at matched sizes, one table per op: mambapy's
  Mamba and Mamba2 blocks, fla's naive gated delta rule and forgetting attention (loaded from
  their files: importing fla needs Triton), SDPA, and titans-pytorch's ``NeuralMemory`` (with
  ``--parity``: the float64 agreement of the two memories where they compute the same rule).
  Each row also gives the effective bandwidth (compulsory bytes of inputs, parameters, outputs
  and their gradients over the time) against the copy bandwidth measured in the same run.
- ``decode``: the cost of one decoded token after N tokens. By default the bare KV-cache mixer
  (its cache filled to N with random keys and values), with the read alone beside it for
  ``attention`` and ``landmark``; with ``--whole-model``, an ``LRModel`` that prefills N tokens
  and then decodes, with the state it carries per sequence.
- ``compile``: eager against ``torch.compile`` (Inductor) for the mixer's block, with the
  compile time and how far the compiled output and input gradient are from the eager ones.
- ``train-step``: one optimizer step (forward, backward, gradient clipping, AdamW) of the
  ``LRModel`` the recall arena trains, every mixer as a ratio to attention measured in the
  same run. With ``--interleaved`` all cases of a (d, L) share one process and are timed in
  turn (A, B, C, A, B, C, ...), which keeps ratios meaningful on a loaded machine; there a
  mixer may be named ``mixer:lean``, the mixer with its op's CPU path forced back to the one
  that ran before the by-size dispatch, or ``titans:no-memory`` / ``titans:no-memory-read``,
  the Titans block with parts taken out to show where its step goes (``PATHS``);
  ``--count-ops`` adds the number of ATen ops each step dispatches, which does not depend
  on the machine or its load. The allocator is set as the harness sets it
  (``lra/allocator.py``: large freed blocks stay mapped); ``--malloc system`` times glibc's
  defaults instead.
- ``ops``: forward+backward of a bare op at the shapes the arena's mixers give it (batch 32),
  every CPU algorithm against the dispatch, interleaved in one process: the measurements
  behind the size crossovers of the ops' CPU paths (docs/bench/speed.md, "Small shapes").

Every case of ``scaling``, ``peers`` and ``train-step`` runs in a fresh process
(``scripts/measure.py``); ``decode`` and ``compile`` run their cases one after the other in
this process, ``ops`` and ``train-step --interleaved`` in turn in one process per (d, L).
Output goes to a run folder under ``runs/bench/`` (a Markdown report and a JSON file of the raw
results); ``--publish DOC`` also writes the report into its marked section of a tracked doc
(the rest of the doc is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # scripts/ is not a package: imported from its folder

SCRIPT = "scripts/bench.py"
MODES = ("scaling", "peers", "decode", "compile", "train-step", "ops")
# The doc a mode publishes into when --publish names none.
DEFAULT_DOC = {"train-step": measure.DOCS / "bench" / "train_step.md"}
PNG = "<plot.png>"  # in a report: the name of its plot, which differs between run and doc


# ============================================================================ shared
def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` -> (name, options); values are JSON where
    they parse as JSON (``null``, numbers, lists), else strings."""
    name, _, opts = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for opt in filter(None, opts.split(",")):
        key, _, val = opt.partition("=")
        try:
            kwargs[key] = json.loads(val)
        except json.JSONDecodeError:
            kwargs[key] = val
    return name, kwargs


def section_tag(mode: str) -> str:
    # a run with glibc's mmap threshold set measures live memory: a section of its own
    return f"bench-{mode}" + ("-mmap" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "")


def finish(args: argparse.Namespace, body: str, results: Any,
           extra: dict[str, Any] | None = None) -> Path:
    """Write the run folder's report and JSON; with --publish, the doc's section too."""
    out = measure.run_dir(args.mode, args.out)
    md = out / f"{args.mode}.md"
    md.write_text(body.replace(PNG, f"{args.mode}.png") + "\n", encoding="utf-8")
    (out / f"{args.mode}.json").write_text(json.dumps(
        {"provenance": args.provenance, **(extra or {}), "results": results}, indent=1))
    print(f"wrote {md} and {args.mode}.json")
    if args.publish is not None:
        doc = Path(args.publish) if args.publish else DEFAULT_DOC.get(args.mode)
        if doc is None:
            raise SystemExit(f"--publish: the {args.mode} mode has no doc of its own; name one "
                             f"(--publish docs/bench/NAME.md)")
        png = doc.with_suffix(".png")
        if (out / f"{args.mode}.png").exists():
            png.write_bytes((out / f"{args.mode}.png").read_bytes())
        measure.write_section(doc, section_tag(args.mode), body.replace(PNG, png.name))
        print(f"published into {doc} (section {section_tag(args.mode)})")
    return out


def _add_common(p: argparse.ArgumentParser, *, repeats: int, threads: int) -> None:
    own = ", ".join(f"{m}: {d.relative_to(measure.REPO)}" for m, d in DEFAULT_DOC.items())
    p.add_argument("--repeats", type=int, default=repeats, help="timed repeats per case")
    p.add_argument("--threads", type=int, default=threads,
                   help="torch threads per case (0: torch's default)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder for the report and the JSON (default: a new folder under "
                        "runs/bench/)")
    p.add_argument("--publish", nargs="?", const="", default=None, metavar="DOC",
                   help="also write the report into its marked section of this tracked doc "
                        f"(without a path: the mode's own doc; {own})")


def _add_timeout(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument("--timeout", type=float, default=default, help="seconds per case")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def exponent(a: float, b: float, la: int, lb: int) -> float:
    return math.log(b / a) / math.log(lb / la) if a > 0 and b > 0 else float("nan")


# ============================================================================ scaling
def mixer_case(cfg: dict[str, Any]) -> measure.Case:
    """Forward+backward of the bare mixer on x of shape (batch, L, d)."""
    import torch

    import lrm

    torch.manual_seed(0)
    dev = cfg["device"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["dtype"]]
    m = lrm.mixer(cfg["mixer"], cfg["d"], **cfg["kwargs"]).to(dev, dtype)
    x = torch.randn(cfg["batch"], cfg["L"], cfg["d"], device=dev, dtype=dtype,
                    requires_grad=True)

    def step() -> None:
        y, _ = m(x)
        y.float().square().mean().backward()
        m.zero_grad(set_to_none=True)
        x.grad = None

    return measure.Case(step, device=dev)


def run_scaling(args: argparse.Namespace) -> None:
    from lrm import registry

    rows, t0 = [], time.time()
    for spec in args.mixers:
        name, kwargs = parse_spec(spec)
        registry.canonical(name)  # an unknown name fails here, listing the valid ones
        for backend in args.backends:
            prev = None
            for L in args.lengths:
                cfg = dict(mixer=name, kwargs=kwargs, L=L, d=args.d, batch=args.batch,
                           dtype=args.dtype, device=args.device, repeats=args.repeats,
                           warmup=1, threads=args.threads)
                res = measure.run_fresh("bench:mixer_case", cfg, timeout=args.timeout,
                                        env={"LRM_BACKEND": backend})
                row = {"label": spec, "backend": backend, "L": L, **res}
                if prev is not None and "error" not in row and "error" not in prev:
                    row["t_exp"] = exponent(prev["time_s"], row["time_s"], prev["L"], L)
                    row["m_exp"] = exponent(prev["mem_mb"], row["mem_mb"], prev["L"], L)
                shown = (f"{1000 * row['time_s']:.1f} ms, {row['mem_mb']:.1f} MB"
                         if "error" not in row else row["error"])
                print(f"{spec:>16s} {backend:>6s} L={L:<6d} {shown}", flush=True)
                rows.append(row)
                prev = row
    lines = [
        f"# Benchmark: {', '.join(args.mixers)}", "",
        *measure.provenance_lines(args.provenance),
        f"dtype {args.dtype}; d={args.d}, batch={args.batch}; median of {args.repeats} "
        f"forward+backward passes after one warm-up pass; wall time {time.time() - t0:.0f} s.",
        "",
        "| mixer | backend | L | fwd+bwd (ms) | min-max (ms) | time exponent | peak mem (MB) "
        "| mem exponent |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['backend']} | {r['L']} | {r['error']} | | | | |")
            continue
        te = "" if r.get("t_exp") is None else f"{r['t_exp']:.2f}"
        me = "" if r.get("m_exp") is None else f"{r['m_exp']:.2f}"
        lines.append(f"| {r['label']} | {r['backend']} | {r['L']} | {1000 * r['time_s']:.1f} | "
                     f"{1000 * r['min_s']:.1f}-{1000 * r['max_s']:.1f} | {te} | "
                     f"{r['mem_mb']:.1f} | {me} |")
    lines += ["", "Exponents are log(t2/t1)/log(L2/L1) against the previous length: 1 = linear, "
              "2 = quadratic.", ""]
    out = measure.run_dir(args.mode, args.out)
    args.out = out
    try:
        plot_scaling(rows, out / "scaling.png")
        lines.append(f"![time and memory vs length]({PNG})")
    except ImportError:
        lines.append("(matplotlib is not installed: no plot)")
    finish(args, "\n".join(lines), rows)


def plot_scaling(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
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


# ============================================================================ peers
PEERS = {  # op -> the implementations compared, lrm's first
    "mamba": ["lrm mamba", "mambapy Mamba"],
    "mamba2": ["lrm mamba2", "mambapy Mamba2"],
    "gdn": ["lrm gated_delta_rule", "fla naive_chunk_gated_delta_rule"],
    "fox": ["lrm forgetting_attn", "torch SDPA (causal softmax)", "fla naive_forgetting_attn"],
    "titans": ["lrm titans (lmm)", "lrm titans (lmm), d_conv=0",
               "titans-pytorch NeuralMemory, default (batch_size=None)",
               "titans-pytorch NeuralMemory, batch_size=chunk"],
}
WHAT = {
    "mamba": "the whole mixer (d_state 16), forward+backward, x of shape (B, L, d)",
    "mamba2": "the whole mixer (d_state 64, head_dim 64, chunk 64), x of shape (B, L, d)",
    "gdn": "the op: q, k, v (B, L, H, d/H), gates (B, L, H); k L2-normalised inside",
    "fox": "the op: q, k, v (B, L, H, d/H), forget-gate logits (B, L, H)",
    "titans": "the memory module alone, x of shape (B, L, d): lrm's `titans` mixer as "
              "`variant=\"lmm\"` and titans-pytorch's `NeuralMemory`, with the same heads, head "
              "width d/H, memory MLP (depth 2, expansion 2) and chunk; the peer at its default "
              "(every chunk's gradient at the weights the call started with) and with "
              "batch_size = chunk (gradients at each chunk's start, as in the paper and in lrm)",
}


def _fla_naive(op: str):
    """fla's naive reference of ``op``: it imports only torch and einops, but importing the fla
    package needs Triton, so the one file is loaded by path."""
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec("fla")
    if spec is None:
        raise ModuleNotFoundError("No module named 'fla'")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "ops" / op / "naive.py"
    mod_spec = importlib.util.spec_from_file_location(f"fla_naive_{op}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def peer_case(cfg: dict[str, Any]) -> measure.Case:
    """Forward+backward of one implementation of ``PEERS``; info: the compulsory bytes."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    L, d, B, dev = cfg["L"], cfg["d"], cfg["batch"], cfg["device"]
    H, impl, C = cfg["heads"], cfg["impl"], cfg["chunk"]
    Dh = d // H
    m: torch.nn.Module | None = None

    def leaf(*s: int) -> torch.Tensor:
        return torch.randn(*s, device=dev, requires_grad=True)

    if impl in ("lrm mamba", "lrm mamba2"):
        import lrm

        kw = ({"d_state": 16} if impl == "lrm mamba"
              else {"d_state": 64, "head_dim": 64, "chunk_size": 64})
        m = lrm.mixer(impl.split()[1], d, **kw)
        xs = [leaf(B, L, d)]
        fwd = lambda x: m(x)[0]  # noqa: E731
    elif impl == "mambapy Mamba":
        from mambapy.mamba import MambaBlock, MambaConfig

        m = MambaBlock(MambaConfig(d_model=d, n_layers=1, d_state=16))
        xs, fwd = [leaf(B, L, d)], m
    elif impl == "mambapy Mamba2":
        from mambapy.mamba2 import Mamba2Block, Mamba2Config

        m = Mamba2Block(Mamba2Config(d_model=d, n_layers=1, d_head=64, d_state=64))
        m.config.chunk_size = 64
        xs, fwd = [leaf(B, L, d)], m
    elif impl in PEERS["gdn"]:
        xs = [leaf(B, L, H, Dh), leaf(B, L, H, Dh), leaf(B, L, H, Dh), leaf(B, L, H),
              leaf(B, L, H)]
        if impl.startswith("lrm"):
            from lrm.ops.delta_rule import gated_delta_rule as op
        else:
            op = _fla_naive("gated_delta_rule").naive_chunk_gated_delta_rule
        fwd = lambda q, k, v, g, beta: op(q, F.normalize(k, dim=-1), v,  # noqa: E731
                                          F.logsigmoid(g), beta.sigmoid())[0]
    elif impl in PEERS["fox"]:
        xs = [leaf(B, L, H, Dh), leaf(B, L, H, Dh), leaf(B, L, H, Dh), leaf(B, L, H)]
        if impl.startswith("lrm"):
            from lrm.ops.forgetting_attn import forgetting_attn

            fwd = lambda q, k, v, g: forgetting_attn(q, k, v, F.logsigmoid(g))  # noqa: E731
        elif impl.startswith("fla"):
            naive = _fla_naive("forgetting_attn").naive_forgetting_attn
            fwd = lambda q, k, v, g: naive(q, k, v, F.logsigmoid(g))  # noqa: E731
        else:
            fwd = lambda q, k, v, g: F.scaled_dot_product_attention(  # noqa: E731
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    elif impl in PEERS["titans"]:
        if impl.startswith("lrm"):
            import lrm

            m = lrm.mixer("titans", d, variant="lmm", n_heads=H, head_dim=Dh, depth=2,
                          expansion=2.0, chunk_size=C,
                          d_conv=0 if "d_conv=0" in impl else 4)
        else:
            from titans_pytorch import NeuralMemory

            m = NeuralMemory(d, chunk_size=C, heads=H, dim_head=Dh,
                             batch_size=C if "batch_size=chunk" in impl else None,
                             default_model_kwargs=dict(depth=2, expansion_factor=2.0))
        xs = [leaf(B, L, d)]
        fwd = lambda x: m(x)[0]  # noqa: E731
    else:
        raise SystemExit(f"unknown implementation {impl!r}; known: "
                         f"{[i for v in PEERS.values() for i in v]}")
    if m is not None:
        m.to(dev)
    params = list(m.parameters()) if m is not None else []
    last: list[torch.Tensor] = []

    def step() -> None:
        y = fwd(*xs)
        y.square().mean().backward()
        for t in xs + params:
            t.grad = None
        last[:] = [y.detach()]

    def info() -> dict[str, Any]:
        return {"bytes": 2 * (sum(t.numel() for t in xs + params) + last[0].numel()) * 4}

    return measure.Case(step, device=dev, info=info)


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


def titans_parity() -> list[str]:
    """Max |lrm - titans-pytorch| in float64 where the two compute the same rule (chunk 1:
    the weights updated after every token), and the size of the difference where they do not.
    titans-pytorch's loss is a mean over features, lrm's a sum: its step size is divided by
    the width."""
    import torch
    from titans_pytorch import NeuralMemory

    from lrm.ops.neural_memory import initial_state, neural_memory

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
                ours, _ = neural_memory(q, k, v, theta, eta, alpha,
                                        initial_state(list(nm.memory_model_parameters), 1),
                                        chunk_size=ours_c, backend="ref")
            diff = (ours[:, :, 0] - theirs).abs().max().item()
            kind = "linear" if depth == 1 else "MLP (depth 2)"
            lines.append(f"| {kind} | chunk_size={peer_chunk}, batch_size={peer_batch} | "
                         f"{ours_c} | {diff:.1e} | {theirs.abs().max().item():.2f} |")
    return lines


def run_peers(args: argparse.Namespace) -> None:
    t0 = time.time()
    bw = copy_bandwidth(args.threads)
    print(f"copy bandwidth: {bw:.1f} GB/s", flush=True)
    sections, results = [], []
    for op in args.mixers:
        if op not in PEERS:
            raise SystemExit(f"peers compares {sorted(PEERS)}, not {op!r}")
        lines = [f"## {op}", "", f"Measured: {WHAT[op]}.", ""]
        if op == "titans" and args.parity:
            lines += ["Output parity (float64, T = 48, width 16, one head):", "",
                      *titans_parity(), ""]
        lines += ["| L | implementation | fwd+bwd (ms) | min-max (ms) | time / lrm | "
                  "peak mem (MB) | mem / lrm | effective GB/s | % of copy bandwidth |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for L in args.lengths:
            first = None
            for impl in PEERS[op]:
                cfg = dict(impl=impl, L=L, d=args.d, batch=args.batch, heads=args.heads,
                           chunk=args.chunk, device=args.device, repeats=args.repeats,
                           warmup=1, threads=args.threads)
                r = measure.run_fresh("bench:peer_case", cfg, timeout=args.timeout)
                results.append({"op": op, "impl": impl, "L": L, **r})
                if "error" in r:
                    why = r["error"]
                    if "No module named" in why:
                        why = f"not installed ({why.split('No module named')[-1].strip()})"
                    lines.append(f"| {L} | {impl} | {why} | | | | | | |")
                    print(f"{op:>8s} L={L:<6d} {impl}: {why}", flush=True)
                    continue
                first = first or (r if impl.startswith("lrm") else None)
                rel_t = f"{r['time_s'] / first['time_s']:.2f}" if first else ""
                rel_m = (f"{r['mem_mb'] / first['mem_mb']:.2f}"
                         if first and first["mem_mb"] > 0 else "")
                gbs = r["bytes"] / r["time_s"] / 1e9
                lines.append(f"| {L} | {impl} | {1000 * r['time_s']:.0f} | "
                             f"{1000 * r['min_s']:.0f}-{1000 * r['max_s']:.0f} | {rel_t} | "
                             f"{r['mem_mb']:.0f} | {rel_m} | {gbs:.2f} | "
                             f"{100 * gbs / bw:.1f} |")
                print(f"{op:>8s} L={L:<6d} {impl}: {1000 * r['time_s']:.0f} ms, "
                      f"{r['mem_mb']:.0f} MB", flush=True)
        sections.append("\n".join(lines))
    head = [
        f"# Peers: {', '.join(args.mixers)}", "",
        *measure.provenance_lines(args.provenance),
        f"device {args.device}; fp32; d={args.d}, heads={args.heads}, chunk={args.chunk}, "
        f"batch={args.batch}; median of {args.repeats} forward+backward passes after a "
        f"warm-up; copy bandwidth {bw:.1f} GB/s (best of 5 copies of a 256 MiB tensor); "
        f"wall {time.time() - t0:.0f} s.", "",
        "Memory is the growth of the process's peak resident set during the first pass. "
        "Effective bandwidth counts only the compulsory traffic (inputs, parameters and "
        "outputs, and their gradients, once each), so it is a floor on the real traffic; its "
        "share of the copy bandwidth says how far an op is from being memory-bound.", ""]
    finish(args, "\n".join(head) + "\n" + "\n\n".join(sections), results,
           {"copy_bandwidth_gbs": bw})


# ============================================================================ decode
def _grow(t, n: int, g):
    import torch

    if 0 not in t.shape:
        return t
    shape = [n if s == 0 else s for s in t.shape]
    return torch.randn(shape, generator=g, dtype=t.dtype) if t.is_floating_point() else t


def filled_state(m, n: int):
    """The mixer's state with every zero-length axis (a KV cache's time axis) grown to n
    random entries: the cost of a read does not depend on what the cache holds."""
    import torch

    g = torch.Generator().manual_seed(0)
    state = m.init_state(1, dtype=torch.float32)
    return type(state)(*(None if t is None else _grow(t, n, g) for t in state))


def read_fn(name: str, kw: dict[str, Any], n: int, d: int):
    """A closure that reads a cache of n tokens for one query, or None for other mixers."""
    import torch

    H = max(1, d // 64)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, t, H, d // H, generator=g) for t in (1, n + 1, n + 1))
    if name == "attention":
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        return lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
    if name == "landmark":
        from lrm.ops import landmark_attn as la

        bl = kw.get("block_len", 32)
        if kw.get("retrieval_topk") is None:
            return lambda: la.landmark_attn(q, k, v, block_len=bl)
        return lambda: la.landmark_retrieval_attn_ref(q, k, v, block_len=bl,
                                                      topk=kw["retrieval_topk"])
    return None


def decode_cache(args: argparse.Namespace) -> tuple[list[str], list[dict[str, Any]]]:
    """The bare mixer's one-token forward with a state of n cached tokens (wall clock)."""
    import torch

    import lrm

    rows = []
    for spec in args.mixers:
        name, kw = parse_spec(spec)
        torch.manual_seed(0)
        m = lrm.mixer(name, args.d, **kw).eval()
        for n in args.context:
            state, x = filled_state(m, n), torch.randn(1, 1, args.d)
            with torch.no_grad():
                res = measure.time_calls(lambda m=m, x=x, state=state: m(x, state),
                                         repeats=args.repeats, warmup=1)
                read = read_fn(name, kw, n, args.d)
                rd = measure.time_calls(read, repeats=args.repeats) if read else None
            rows.append({"mixer": spec, "context": n, **res, "read": rd})
            print(f"{spec:>28s} cache {n:>6d}: {1000 * res['median_s']:8.2f} ms/token (read "
                  f"alone: {rd and round(1000 * rd['median_s'], 2)} ms)", flush=True)

    def table(key: str | None) -> list[str]:
        lines = ["| mixer | " + " | ".join(f"cache {n}" for n in args.context) + " |",
                 "|---" * (len(args.context) + 1) + "|"]
        for spec in args.mixers:
            rs = [r if key is None else r[key] for r in rows if r["mixer"] == spec]
            if all(r is not None for r in rs):
                lines.append(f"| {spec} | " + " | ".join(
                    f"{1000 * r['median_s']:.2f} ms ({1000 * r['min_s']:.2f}-"
                    f"{1000 * r['max_s']:.2f})" for r in rs) + " |")
        return lines

    text = [f"fp32; d={args.d}, batch 1; median (min-max) of {args.repeats} one-token forward "
            "calls after a warm-up, wall clock.", "", *table(None), "",
            "The read alone (one query against the cache in place):", "", *table("read")]
    return text, rows


def decode_model(args: argparse.Namespace) -> tuple[list[str], list[dict[str, Any]]]:
    """An LRModel's decoding step after a prefill of n tokens (CPU time of this process)."""
    import torch

    import lrm

    rows = []
    for spec in args.mixers:
        name, kw = parse_spec(spec)
        for n in args.context:
            torch.manual_seed(0)
            model = lrm.LRModel(lrm.ModelConfig(mixer=name, mixer_kwargs=kw, d_model=args.d,
                                                n_layers=args.layers, vocab_size=256,
                                                head="lm")).eval()
            with torch.no_grad():
                logits, state = model.step(torch.randint(0, 256, (1, n)), model.init_state(1))
                carry = {"state": state, "next": logits[:, -1:].argmax(-1)}

                def one(carry: dict[str, Any] = carry, model: lrm.LRModel = model) -> None:
                    logits, carry["state"] = model.step(carry["next"], carry["state"])
                    carry["next"] = logits[:, -1:].argmax(-1)

                # the prefill was the warm-up
                res = measure.time_calls(one, repeats=args.repeats, warmup=0,
                                         clock=time.process_time)
            floats = sum(b.mixer.state_size(n) for b in model.blocks)
            rows.append({"mixer": spec, "context": n, **res, "state_floats": floats})
            print(f"| {spec} | {n} | {1e3 * res['median_s']:.2f} | {floats:,} |", flush=True)
    text = [f"{args.layers} layers, d={args.d}, vocabulary 256, batch 1, fp32; per case a prefill "
            f"of the context in one `step`, then {args.repeats} decoding steps; CPU time of this "
            "process (`time.process_time`, which other work on a shared machine inflates less "
            "than wall time).", "",
            "| mixer | context | CPU ms per token, median (min-max) | state floats per sequence |",
            "|---|---|---|---|"]
    text += [f"| {r['mixer']} | {r['context']:,} | {1e3 * r['median_s']:.2f} "
             f"({1e3 * r['min_s']:.2f}-{1e3 * r['max_s']:.2f}) | {r['state_floats']:,} |"
             for r in rows]
    return text, rows


def run_decode(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    text, rows = (decode_model if args.whole_model else decode_cache)(args)
    title = ("# Decoding: one token after a context, whole model" if args.whole_model
             else "# Decoding: one token against a KV cache of N tokens")
    body = [title, "", *measure.provenance_lines(args.provenance),
            f"All cases in one process, one after the other; wall {time.time() - t0:.0f} s.", "",
            *text]
    print("\n".join(body))
    finish(args, "\n".join(body), rows)


# ============================================================================ compile
def _fwd_bwd(m, x):
    import torch

    x = x.detach().requires_grad_()
    y = m(x)
    y = y[0] if isinstance(y, tuple) else y
    (g,) = torch.autograd.grad(y.square().mean(), x)
    return y.detach(), g


def compile_trial(mixer: str, L: int, d: int, repeats: int) -> dict[str, Any]:
    import torch

    import lrm

    name, kw = parse_spec(mixer)
    torch.manual_seed(0)
    m = lrm.build(name, d=d, **kw).eval()
    x = torch.randn(1, L, d)
    y_e, g_e = _fwd_bwd(m, x)
    eager = measure.time_calls(lambda: _fwd_bwd(m, x), repeats=repeats, warmup=1)
    row: dict[str, Any] = {"mixer": mixer, "L": L, "eager_s": eager["median_s"], "eager": eager}
    try:
        mc = torch.compile(m)
        t0 = time.perf_counter()
        y_c, g_c = _fwd_bwd(mc, x)
        row["compile_s"] = time.perf_counter() - t0
        comp = measure.time_calls(lambda: _fwd_bwd(mc, x), repeats=repeats, warmup=1)
        row.update(compiled=comp, compiled_s=comp["median_s"],
                   speedup=eager["median_s"] / comp["median_s"],
                   out_diff=float((y_c - y_e).abs().max() / y_e.abs().max()),
                   grad_diff=float((g_c - g_e).abs().max() / g_e.abs().max()))
    except Exception as err:  # a failed compilation is a result here
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    torch._dynamo.reset()
    return row


def run_compile(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for L in args.lengths:
        for mixer in args.mixers:
            row = compile_trial(mixer, L, args.d, args.repeats)
            print({k: v for k, v in row.items() if k not in ("eager", "compiled")}, flush=True)
            rows.append(row)
    lines = [f"# torch.compile on the CPU path: d = {args.d}, batch 1, fp32", "",
             *measure.provenance_lines(args.provenance),
             f"The mixer's block (`lrm.build`), forward+backward; median of {args.repeats} "
             "passes after a warm-up, eager and compiled (Inductor, default mode), in this "
             "process; compile time = the first compiled call; diffs = max |compiled - eager| "
             "over max |eager|, for the output and the input gradient.", "",
             "| mixer | L | eager s | compiled s | speedup | compile s | out diff | grad diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mixer']} | {r['L']} | {r['eager_s']:.3f} | failed: "
                         f"{r['error']} | | | | |")
        else:
            lines.append(f"| {r['mixer']} | {r['L']} | {r['eager_s']:.3f} | "
                         f"{r['compiled_s']:.3f} | {r['speedup']:.2f}x | {r['compile_s']:.0f} | "
                         f"{r['out_diff']:.1e} | {r['grad_diff']:.1e} |")
    print("\n".join(lines))
    finish(args, "\n".join(lines), rows)


# ============================================================================ train-step
# mixer:path -> (module, attribute, value) settings that force the mixer's op back to the CPU
# path that ran before the op dispatched by size: the lean (block-recomputed) path, with the
# chunk the mixer asks for
PATHS: dict[tuple[str, str], list[tuple[str, str, Any]]] = {
    ("mamba", "lean"): [("lrm.ops.selective_scan", "SMALL_SLICE_ELEMENTS", 0)],
    ("mamba2", "lean"): [("lrm.ops.ssd", "SMALL_ELEMENTS", 0),
                         ("lrm.ops.ssd", "cpu_chunk_size", lambda P, N, chunk: chunk)],
    ("mamba2", "ref"): [("lrm.ops.ssd", "SMALL_ELEMENTS", 2**62)],
    ("gdn", "lean"): [("lrm.ops.delta_rule", "SMALL_ELEMENTS", 0),
                      ("lrm.ops.delta_rule", "cpu_chunk_size", lambda K, rows=32: 64)],
}


def _memory_stand_in(q, k, v, theta, eta, alpha, state, **_):
    """Titans' memory op replaced by one product of the same shapes (y = θ v): what the block
    costs around its memory's learning. A profile, not a model."""
    return v * theta[..., None], state


# titans:no-memory and titans:no-memory-read take parts out of the Titans block, to show where
# its step goes (docs/bench/train_step_titans.md): without the memory op, then also without the read
# of the memory that makes MAC's tokens h (the read passes its queries through)
PATHS.update({
    ("titans", "no-memory"): [("lrm.mixers.titans", "neural_memory", _memory_stand_in)],
    ("titans", "no-memory-read"): [
        ("lrm.mixers.titans", "neural_memory", _memory_stand_in),
        ("lrm.mixers.titans", "memory_forward", lambda weights, x, **_: x)],
})


# what the report says of the C allocator (--malloc)
MALLOC_NOTE = {
    "harness": "The allocator as the harness sets it (`lra/allocator.py`: large freed blocks "
               "stay mapped).",
    "system": "glibc's default allocator (`--malloc system`: blocks above 32 MiB are fresh "
              "pages at every step).",
}


def split_path(spec: str) -> tuple[str, str]:
    """``"mamba2:lean"`` -> ("mamba2", "lean"); a bare name has the path ""."""
    mixer, _, path = spec.partition(":")
    if path and (mixer, path) not in PATHS:
        raise SystemExit(f"train-step: no CPU path {path!r} for {mixer!r}; known: "
                         f"{', '.join(f'{m}:{p}' for m, p in PATHS)}")
    return mixer, path


@contextlib.contextmanager
def forced_path(mixer: str, path: str):
    """Apply PATHS[(mixer, path)] for the duration (nothing for the default path)."""
    import importlib

    saved = []
    try:
        for module, attr, value in PATHS.get((mixer, path), []):
            mod = importlib.import_module(module)
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, value)
        yield
    finally:
        for mod, attr, value in reversed(saved):
            setattr(mod, attr, value)


def train_step_case(cfg: dict[str, Any]) -> measure.Case:
    """One optimizer step of the recall arena's model: an ``LRModel`` with the arena's layers,
    vocabulary, LM head and per-mixer options (``lra.leaderboard.arena``), on an MQAR batch,
    with ``lra.quick.fit``'s step: cross-entropy on the query positions, backward, gradient
    clipping at 1, AdamW over ``lrm.optim.param_groups``."""
    import torch
    import torch.nn.functional as F

    import lrm
    from lra.data import recall_tasks
    from lra.leaderboard.arena import ARENA_KWARGS, N_LAYERS, VOCAB
    from lra.quick import IGNORE
    from lrm.optim import param_groups

    if cfg.get("malloc", "harness") == "harness":  # before the model's first tensors
        from lra.allocator import keep_freed_memory

        keep_freed_memory()
    torch.manual_seed(0)
    (mixer, path), d, L = split_path(cfg["mixer"]), cfg["d"], cfg["L"]
    opts = ARENA_KWARGS.get(mixer)
    model = lrm.LRModel(lrm.ModelConfig(mixer=mixer, d_model=d, n_layers=N_LAYERS,
                                        vocab_size=VOCAB, head="lm",
                                        mixer_kwargs=opts(d) if opts else {}))
    # the arena's 16 pairs where the length holds them (MQAR needs L >= 4 * pairs)
    x, y = recall_tasks.mqar(cfg["batch"], L, vocab_size=VOCAB, num_kv_pairs=min(16, L // 4),
                             seed=0)
    opt = torch.optim.AdamW(param_groups(model, lr=3e-3, weight_decay=0.1), betas=(0.9, 0.98))
    model.train()
    if cfg.get("compile"):  # as `lra fit --model.compile true`: in place, compiled at 1st step
        model.compile()

    def step() -> None:
        with forced_path(mixer, path):
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                                   ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    return measure.Case(step, info=lambda: {
        "params": sum(p.numel() for p in model.parameters())})


def ratio(r: dict[str, Any], base: dict[str, Any]) -> tuple[float, float, float]:
    """(median ratio, low, high): the ratio of the medians, and the range that the two
    interquartile ranges allow (each case's timings come from a different process, so
    there is no pairing of repeats to take ratios of)."""
    return (r["median_s"] / base["median_s"], r["q1_s"] / base["q3_s"],
            r["q3_s"] / base["q1_s"])


def run_train_step(args: argparse.Namespace) -> None:
    import lrm

    mixers = args.mixers or lrm.available()
    unknown = sorted({split_path(m)[0] for m in mixers} - set(lrm.available()))
    if unknown:
        raise SystemExit(f"train-step: unknown mixer(s) {unknown}; registered: "
                         f"{lrm.available()}")
    # attention first: every ratio is to the attention of the same run
    order = ["attention", *[m for m in mixers if m != "attention"]]
    if args.interleaved:
        return run_train_step_interleaved(args, order)
    if args.compile:
        raise SystemExit("train-step: --compile needs --interleaved (compiled models are timed "
                         "in the process that compiled them)")
    if args.count_ops:
        raise SystemExit("train-step: --count-ops needs --interleaved (the ops are counted in "
                         "the process that built the models)")
    if any(":" in m for m in order):
        raise SystemExit("train-step: a mixer:path variant needs --interleaved (the path is "
                         "set in the measuring process)")
    t0, rows = time.time(), []
    for d in args.d:
        for L in args.lengths:
            base = None
            for mixer in order:
                cfg = dict(mixer=mixer, d=d, L=L, batch=args.batch, repeats=args.repeats,
                           warmup=args.warmup, threads=args.threads, malloc=args.malloc)
                r = {"mixer": mixer, "d": d, "L": L,
                     **measure.run_fresh("bench:train_step_case", cfg, timeout=args.timeout)}
                if mixer == "attention":
                    base = r if "error" not in r else None
                if "error" not in r and base is not None:
                    r["ratio"], r["ratio_lo"], r["ratio_hi"] = ratio(r, base)
                rows.append(r)
                shown = (r["error"] if "error" in r else
                         f"{1000 * r['median_s']:.1f} ms, x{r.get('ratio', float('nan')):.2f}")
                print(f"d={d:<4d} L={L:<5d} {mixer:>10s} {shown}", flush=True)
    lines = [
        "# Training step: every mixer against attention", "",
        *measure.provenance_lines(args.provenance),
        f"One optimizer step (forward, cross-entropy, backward, gradient clipping, AdamW) of "
        f"the recall arena's model: `LRModel`, 2 layers, LM head, vocabulary 256, the arena's "
        f"per-mixer options, an MQAR batch of {args.batch}; each case in a fresh process, "
        f"{args.warmup} warm-up step(s) untimed, then {args.repeats} timed. Ratio = median "
        f"time / attention's median at the same L and d in this run; its range combines the "
        f"two interquartile ranges. {MALLOC_NOTE[args.malloc]} Wall {time.time() - t0:.0f} s.",
        "", "| mixer | d | L | step (ms), median | min-max (ms) | ratio to attention | "
        "ratio range | peak mem (MB) | params |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mixer']} | {r['d']} | {r['L']} | {r['error']} | | | | | |")
            continue
        rat = f"{r['ratio']:.2f}" if "ratio" in r else "–"
        rng = f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f}" if "ratio" in r else ""
        lines.append(f"| {r['mixer']} | {r['d']} | {r['L']} | {1000 * r['median_s']:.1f} | "
                     f"{1000 * r['min_s']:.1f}-{1000 * r['max_s']:.1f} | {rat} | {rng} | "
                     f"{r['mem_mb']:.0f} | {r['params']:,} |")
    print("\n".join(lines))
    finish(args, "\n".join(lines), rows)


def interleaved(fns: dict[str, Any], *, repeats: int, warmup: int) -> dict[str, dict]:
    """Call the functions in turn (A, B, C, A, B, C, ...): ``warmup`` untimed rounds, then
    ``repeats`` timed ones; :func:`measure.summarize` of each one's times. On a shared machine
    load moves every alternative alike, so ratios of these medians stay meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: measure.summarize(v) for k, v in times.items()}


def dispatched_ops(fn: Any) -> int:
    """How many ATen ops one call of ``fn`` dispatches, counted below autograd, so the
    backward's ops count as well as the forward's (views included). At the arena's small
    sizes a CPU step is bound by this count more than by arithmetic, and unlike a time it
    does not depend on the machine or its load."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with _Count() as counter:
        fn()
    return counter.n


def _ratio_table(args: argparse.Namespace, title: str, what: str, base: str,
                 rows: list[dict[str, Any]], names: list[str], t0: float,
                 extra: Sequence[str] = ()) -> None:
    lines = [title, "", *measure.provenance_lines(args.provenance),
             f"{what} All alternatives of one (d, L) were timed in turn in one process "
             f"({args.warmup} warm-up round(s), then {args.repeats} timed); ratio = median time "
             f"/ the median of `{base}` in the same rounds. Wall {time.time() - t0:.0f} s.", "",
             f"| d | L | {base} (ms) | " + " | ".join(f"`{n}` ×" for n in names if n != base)
             + " |", "|---" * (2 + len(names)) + "|"]
    for r in rows:
        cells = [f"{r['times'][n]['median_s'] / r['times'][base]['median_s']:.2f}"
                 for n in names if n != base]
        lines.append(f"| {r['d']} | {r['L']} | {1000 * r['times'][base]['median_s']:.1f} | "
                     + " | ".join(cells) + " |")
    lines += extra
    print("\n".join(lines))
    finish(args, "\n".join(lines), rows)


def run_train_step_interleaved(args: argparse.Namespace, order: list[str]) -> None:
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    t0, rows = time.time(), []
    for d in args.d:
        for L in args.lengths:
            fns = {m: train_step_case(dict(mixer=m, d=d, L=L, batch=args.batch,
                                           compile=args.compile, malloc=args.malloc)).step
                   for m in order}
            first = {}
            if args.compile:  # the first step compiles: timed on its own, not in the ratios
                for m, fn in fns.items():
                    t1 = time.perf_counter()
                    fn()
                    first[m] = time.perf_counter() - t1
                    print(f"d={d:<4d} L={L:<5d} {m}: first (compiling) step {first[m]:.0f} s",
                          flush=True)
            t = interleaved(fns, repeats=args.repeats, warmup=args.warmup)
            rows.append({"d": d, "L": L, "times": t, "first_step_s": first})
            if args.count_ops:  # after the timing, which the counting mode would slow
                rows[-1]["ops"] = {m: dispatched_ops(fn) for m, fn in fns.items()}
            print(f"d={d:<4d} L={L:<5d} attention {1000 * t['attention']['median_s']:.1f} ms; "
                  + ", ".join(f"{m} x{t[m]['median_s'] / t['attention']['median_s']:.2f}"
                              for m in order[1:]), flush=True)
    what = (f"One optimizer step of the recall arena's model (as in `train-step`), batch "
            f"{args.batch}. {MALLOC_NOTE[args.malloc]}")
    if args.compile:
        what += (" Every model compiled in place (`nn.Module.compile`, Inductor's default mode, "
                 "as `lra fit --model.compile true`); its first step, which compiles, was timed "
                 "on its own: " + "; ".join(
                     f"d {r['d']} L {r['L']}: " + ", ".join(
                         f"{m} {s:.0f} s" for m, s in r["first_step_s"].items())
                     for r in rows) + ".")
    title = ("# Training step, interleaved" + (", compiled" if args.compile else "")
             + ": every mixer against attention")
    extra: list[str] = []
    if args.count_ops:
        extra = ["", "ATen ops dispatched by one step (forward, backward and optimizer; views "
                 "included; counted below autograd with a `TorchDispatchMode`):", "",
                 "| d | L | " + " | ".join(f"`{m}`" for m in order) + " |",
                 "|---" * (2 + len(order)) + "|",
                 *(f"| {r['d']} | {r['L']} | " + " | ".join(f"{r['ops'][m]:,}" for m in order)
                   + " |" for r in rows)]
    _ratio_table(args, title, what, "attention", rows, order, t0, extra)


# ops mode: the op at the shapes an arena mixer of width d gives it, batch B; every CPU
# algorithm of the op, the dispatch first (the baseline of the ratios)
def _op_algorithms(op: str, d: int, chunks: list[int], batch: int) -> dict[str, Any]:
    from lrm.ops import delta_rule as R
    from lrm.ops import selective_scan as SS
    from lrm.ops import ssd as S

    if op == "scan":  # mamba: d_inner 2d, N from --d-state
        return {"dispatch": SS.selective_scan, "small": SS.selective_scan_small,
                "lean": SS.selective_scan_lean}
    if op == "ssd":  # mamba2: heads of head_dim min(64, 2d/8), d_state min(128, max(16, d/2))
        P, N = max(1, min(64, 2 * d // 8)), min(128, max(16, d // 2))
        Q = S.cpu_chunk_size(P, N, 256)
        algos = {"dispatch": lambda *a, **k: S.ssd(*a, 256, **k),
                 "lean chunk 256": lambda *a, **k: S.ssd_lean(*a, 256, **k),
                 f"lean chunk {Q}": lambda *a, **k: S.ssd_lean(*a, Q, **k)}
        for c in chunks:
            algos[f"ref chunk {c}"] = lambda *a, c=c, **k: S.ssd_ref(*a, c, **k)
        return algos
    if op == "delta":  # gdn as the arena builds it: one head, K = d, V = 2d
        C = R.cpu_chunk_size(d, batch)
        algos = {"dispatch": R.gated_delta_rule,
                 "lean chunk 64": lambda *a: R.gated_delta_rule_lean(*a, chunk_size=64),
                 f"lean chunk {C}": lambda *a: R.gated_delta_rule_lean(*a, chunk_size=C)}
        for c in chunks:
            algos[f"ref chunk {c}"] = lambda *a, c=c: R.gated_delta_rule_ref(*a, chunk_size=c)
        return algos
    raise SystemExit(f"ops: unknown op {op!r}; known: scan, ssd, delta")


def _op_pass(op: str, fn: Any, d: int, L: int, batch: int, d_state: int = 16) -> Any:
    """One forward+backward of ``fn`` on fixed random inputs of the op's arena shapes
    (``d_state``: the scan's N)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g).requires_grad_()

    if op == "scan":
        e, n = 2 * d, d_state
        u, delta, B, C, z = r(batch, e, L), r(batch, e, L), r(batch, n, L), r(batch, n, L), \
            r(batch, e, L)
        A = (-torch.rand(e, n, generator=g) * 4 - 0.1).requires_grad_()
        D, bias = r(e), r(e)

        def run() -> None:
            fn(u, delta, A, B, C, D, z, bias, True).sum().backward()
    elif op == "ssd":
        P, N = max(1, min(64, 2 * d // 8)), min(128, max(16, d // 2))
        H = 2 * d // P
        x, dt, B, C = r(batch, L, H, P), r(batch, L, H), r(batch, L, 1, N), r(batch, L, 1, N)
        A = (-torch.rand(H, generator=g) - 0.5).requires_grad_()
        D, bias = r(H), r(H)

        def run() -> None:
            fn(x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True).sum().backward()
    else:
        q, k = (F.normalize(torch.randn(batch, L, 1, d, generator=g), dim=-1).requires_grad_()
                for _ in range(2))
        v = r(batch, L, 1, 2 * d)
        gate = (-0.1 * torch.rand(batch, L, 1, generator=g)).requires_grad_()
        beta = torch.rand(batch, L, 1, generator=g).requires_grad_()

        def run() -> None:
            fn(q, k, v, gate, beta)[0].sum().backward()
    return run


def run_ops(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    t0 = time.time()
    for op in args.ops:
        rows, names = [], []
        for L in args.lengths:
            for d in args.d:
                algos = _op_algorithms(op, d, args.chunks, args.batch)
                names = list(algos)
                fns = {k: _op_pass(op, f, d, L, args.batch, args.d_state)
                       for k, f in algos.items()}
                t = interleaved(fns, repeats=args.repeats, warmup=args.warmup)
                rows.append({"op": op, "d": d, "L": L, "times": t})
                base = t["dispatch"]["median_s"]
                print(f"{op} d={d:<4d} L={L:<5d} dispatch {1000 * base:.1f} ms; "
                      + ", ".join(f"{k} x{t[k]['median_s'] / base:.2f}" for k in names[1:]),
                      flush=True)
        _ratio_table(args, f"# `{op}`: CPU algorithms against the dispatch",
                     f"Forward and backward of the bare op at the shapes an arena mixer of "
                     f"width d gives it (batch {args.batch}"
                     + (f", the scan's N {args.d_state}" if op == "scan" else "")
                     + "); chunk columns are in the op's own units.", "dispatch", rows, names,
                     t0)


# ============================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.split("\n\n")[0],
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="mode", required=True, metavar="MODE",
                           help=f"one of {', '.join(MODES)} (scaling when none is named)")
    device = "cuda" if _cuda() else "cpu"

    s = sub.add_parser("scaling", formatter_class=fmt, help="time and memory against length",
                       description="Forward+backward time and peak memory of bare mixers "
                                   "against the sequence length, one fresh process per case.")
    s.add_argument("--mixers", nargs="+", required=True,
                   help="registry names; NAME:key=value,key=value passes mixer options")
    s.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 8192],
                   help="sequence lengths")
    s.add_argument("--backends", nargs="+", default=["ref"], choices=["ref", "auto", "kernel"],
                   help="LRM_BACKEND of each case")
    s.add_argument("--d", type=int, default=256, help="width")
    s.add_argument("--batch", type=int, default=1, help="batch size")
    s.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="parameter and input dtype")
    s.add_argument("--device", default=device, help="torch device")
    _add_timeout(s, 600)
    _add_common(s, repeats=3, threads=0)

    s = sub.add_parser("peers", formatter_class=fmt, help="lrm beside pure-PyTorch peers",
                       description="lrm beside mambapy, fla's naive references, SDPA and "
                                   "titans-pytorch, one table per op, one fresh process per "
                                   "case.")
    s.add_argument("--mixers", nargs="+", default=list(PEERS), choices=list(PEERS),
                   help="ops to compare")
    s.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096],
                   help="sequence lengths")
    s.add_argument("--d", type=int, default=256, help="width")
    s.add_argument("--heads", type=int, default=4, help="heads of the op-level peers and titans")
    s.add_argument("--chunk", type=int, default=64, help="chunk size of the titans memories")
    s.add_argument("--batch", type=int, default=1, help="batch size")
    s.add_argument("--device", default="cpu", help="torch device")
    s.add_argument("--parity", action="store_true",
                   help="with titans: also check float64 output parity with titans-pytorch")
    _add_timeout(s, 600)
    _add_common(s, repeats=3, threads=0)

    s = sub.add_parser("decode", formatter_class=fmt, help="cost of one decoded token",
                       description="The cost of one decoded token after a context: the bare "
                                   "KV-cache mixer with a filled cache, or (--whole-model) an "
                                   "LRModel after a prefill.")
    s.add_argument("--mixers", nargs="+", default=["attention", "landmark"],
                   help="registry names; NAME:key=value,key=value passes mixer options")
    s.add_argument("--context", nargs="+", type=int, default=[4096, 16384, 65536],
                   help="tokens cached (or prefilled) before the timed token")
    s.add_argument("--d", type=int, default=256, help="width")
    s.add_argument("--whole-model", action="store_true",
                   help="time an LRModel's decoding step after a prefill, not the bare mixer")
    s.add_argument("--layers", type=int, default=4, help="layers of the --whole-model model")
    _add_common(s, repeats=20, threads=1)

    s = sub.add_parser("compile", formatter_class=fmt, help="eager against torch.compile",
                       description="Eager against torch.compile (Inductor) for each mixer's "
                                   "block, forward+backward, in this process.")
    s.add_argument("--mixers", nargs="+", default=["mamba", "mamba2", "gdn", "fox", "s4d"],
                   help="registry names; NAME:key=value,key=value passes mixer options")
    s.add_argument("--lengths", nargs="+", type=int, default=[2048], help="sequence lengths")
    s.add_argument("--d", type=int, default=128, help="width")
    _add_common(s, repeats=3, threads=1)

    s = sub.add_parser("train-step", formatter_class=fmt,
                       help="one optimizer step of the arena's model, as a ratio to attention",
                       description="One optimizer step of the recall arena's LRModel per "
                                   "mixer, each in a fresh process, as a ratio to attention "
                                   "in the same run.")
    s.add_argument("--mixers", nargs="+", default=None,
                   help="registry names (default: every registered mixer; attention is always "
                        "measured, as the baseline)")
    s.add_argument("--lengths", nargs="+", type=int, default=[128, 512, 2048],
                   help="sequence lengths")
    s.add_argument("--d", nargs="+", type=int, default=[32, 64, 128], help="widths")
    s.add_argument("--batch", type=int, default=32, help="batch size (the arena's)")
    s.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    s.add_argument("--dry-run", action="store_true",
                   help="tiny sizes (L 32, d 16, batch 2, 1 warm-up step, 1 repeat): checks "
                        "the plumbing, not a measurement")
    s.add_argument("--interleaved", action="store_true",
                   help="time all mixers of a (d, L) in turn in this process (mixer:path "
                        f"variants allowed: {', '.join(f'{m}:{p}' for m, p in PATHS)})")
    s.add_argument("--compile", action="store_true",
                   help="with --interleaved: compile every model (torch.compile, in place) and "
                        "time the compiled steps; each model's first, compiling step is "
                        "reported on its own")
    s.add_argument("--count-ops", action="store_true",
                   help="with --interleaved: also count the ATen ops one step dispatches "
                        "(machine-independent; the count runs after the timing)")
    s.add_argument("--malloc", choices=("harness", "system"), default="harness",
                   help="the C allocator: as the harness sets it (lra/allocator.py: large "
                        "freed blocks stay mapped) or glibc's defaults")
    _add_timeout(s, 1200)
    _add_common(s, repeats=5, threads=1)

    s = sub.add_parser("ops", formatter_class=fmt,
                       help="a bare op's CPU algorithms against its dispatch, interleaved",
                       description="Forward and backward of a bare op at the arena's shapes, "
                                   "every CPU algorithm timed in turn with the dispatch in one "
                                   "process.")
    s.add_argument("--ops", nargs="+", default=["scan", "ssd", "delta"],
                   choices=["scan", "ssd", "delta"],
                   help="selective scan (mamba), SSD (mamba2), gated delta rule (gdn)")
    s.add_argument("--lengths", nargs="+", type=int, default=[128, 512], help="lengths")
    s.add_argument("--d", nargs="+", type=int, default=[32, 64, 128],
                   help="model widths (the op's shapes follow the arena's mixer of that width)")
    s.add_argument("--chunks", nargs="+", type=int, default=[],
                   help="also the chunked reference at these chunk sizes (ssd, delta)")
    s.add_argument("--batch", type=int, default=32, help="batch size (the arena's)")
    s.add_argument("--d-state", type=int, default=16,
                   help="the selective scan's state size N (mamba's d_state)")
    s.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    _add_common(s, repeats=3, threads=1)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in MODES and argv[0] not in ("-h", "--help")):
        argv = ["scaling", *argv]
    args = build_parser().parse_args(argv)
    if getattr(args, "dry_run", False):
        args.lengths, args.d, args.batch, args.warmup, args.repeats = [32], [16], 2, 1, 1
    args.provenance = measure.provenance(SCRIPT, argv, threads=args.threads,
                                         device=getattr(args, "device", "cpu"))
    {"scaling": run_scaling, "peers": run_peers, "decode": run_decode,
     "compile": run_compile, "train-step": run_train_step, "ops": run_ops}[args.mode](args)


if __name__ == "__main__":
    main()
