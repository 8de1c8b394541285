"""Cost of decoding one token with a cache of N tokens, per mixer (KV-cache mixers).

    python scripts/bench_decode.py --mixers attention landmark landmark:retrieval_topk=4 \
        --cache 4096 16384 65536 --threads 1 --out docs/bench/landmark_decode.md

The cache is filled with random keys and values (the cost does not depend on their content):
every tensor of ``init_state`` with a zero-length dimension (the time axis of a KV cache) is
grown to N along it. Then ``forward`` on one token with that state is timed (median of
``--repeats`` calls after one warm-up), in one process, one case after the other. A mixer spec is
``name`` or ``name:key=value,key=value`` as in ``scripts/bench.py``.

The mixer's time includes what the contract costs every mixer here: the state is never mutated,
so each call concatenates the new token to a copy of the cache (O(N·d) memory traffic, the same
for every KV-cache mixer). A second table times the read alone, for ``attention`` and
``landmark``: one query against a cache already in place (SDPA for attention; for landmark
the grouped softmax over a cache rotated in advance, or top-k retrieval), so that what the
mechanisms read per token is compared without the copy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import lrm
from lrm.ops.landmark_attn import landmark_attn_ref, landmark_retrieval_attn_ref


def _grow(t: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    if 0 not in t.shape:
        return t
    shape = [n if s == 0 else s for s in t.shape]
    return torch.randn(shape, generator=g, dtype=t.dtype) if t.is_floating_point() else t


def filled_state(m: torch.nn.Module, n: int, d_dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    state = m.init_state(1, dtype=d_dtype)
    return type(state)(*(None if t is None else _grow(t, n, g) for t in state))


def read_fn(name: str, kw: dict, n: int, d: int):
    """A closure that reads a cache of n tokens for one query, or None for other mixers."""
    H = max(1, d // 64)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, t, H, d // H, generator=g) for t in (1, n + 1, n + 1))
    if name == "attention":
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        return lambda: torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
    if name == "landmark":
        bl = kw.get("block_len", 32)
        if kw.get("retrieval_topk") is None:
            return lambda: landmark_attn_ref(q, k, v, block_len=bl)
        return lambda: landmark_retrieval_attn_ref(q, k, v, block_len=bl,
                                                   topk=kw["retrieval_topk"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixers", nargs="+", required=True)
    p.add_argument("--cache", nargs="+", type=int, default=[4096, 16384, 65536])
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows, t0 = [], time.time()
    for spec in a.mixers:
        name, _, opts = spec.partition(":")
        kw = {k: json.loads(v) for k, v in (o.split("=") for o in opts.split(",") if o)}
        torch.manual_seed(0)
        m = lrm.mixer(name, a.d, **kw).eval()
        for n in a.cache:
            state = filled_state(m, n, torch.float32)
            x = torch.randn(1, 1, a.d)
            times = []
            with torch.no_grad():
                m(x, state)
                for _ in range(a.repeats):
                    t = time.perf_counter()
                    m(x, state)
                    times.append(time.perf_counter() - t)
            ms = 1000 * statistics.median(times)
            read = read_fn(name, kw, n, a.d)
            read_ms = None
            if read is not None:
                read()
                times = []
                for _ in range(a.repeats):
                    t = time.perf_counter()
                    read()
                    times.append(time.perf_counter() - t)
                read_ms = 1000 * statistics.median(times)
            rows.append((spec, n, ms, read_ms))
            print(f"{spec:>28s} cache {n:>6d}: {ms:8.2f} ms/token (read alone: {read_ms} ms)",
                  flush=True)
    lines = [f"Command: `python scripts/bench_decode.py --mixers {' '.join(a.mixers)} --cache "
             f"{' '.join(map(str, a.cache))} --threads {a.threads} --repeats {a.repeats}"
             + (f" --out {a.out}`" if a.out else "`") + "  ",
             f"Device: CPU ({platform.machine()}); fp32; d={a.d}, batch 1; median of "
             f"{a.repeats} one-token forward calls; wall time {time.time() - t0:.0f} s.", "",
             "| mixer | " + " | ".join(f"cache {n}" for n in a.cache) + " |",
             "|---" * (len(a.cache) + 1) + "|"]
    for spec in a.mixers:
        cells = [f"{ms:.2f} ms" for s, _, ms, _ in rows if s == spec]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    lines += ["", "The read alone (one query against the cache in place):", "",
              "| mixer | " + " | ".join(f"cache {n}" for n in a.cache) + " |",
              "|---" * (len(a.cache) + 1) + "|"]
    for spec in a.mixers:
        cells = [f"{r:.2f} ms" for s, _, _, r in rows if s == spec and r is not None]
        if cells:
            lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
