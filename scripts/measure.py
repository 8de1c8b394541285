"""How the scripts measure: a case timed in a fresh process, timers that report the median with
its spread, the provenance of a run, where its output goes, and the writer of a marked section
of a Markdown doc.

A case is built by a *builder*, a function ``builder(cfg) -> Case`` in a module of ``scripts/``
(named ``"module:function"``). :func:`run_fresh` runs it in a new Python process
(``python scripts/measure.py module:function JSON``), so that no two cases share caches, the
allocator's state or a peak-memory counter:

- time: ``cfg["warmup"]`` untimed steps, then ``cfg["repeats"]`` timed ones; the summary is the
  median with the minimum, maximum and quartiles of the timed steps;
- memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the first step, less what was
  allocated before it; on CPU, the growth of the process's peak resident set (``ru_maxrss``)
  over the first step, which counts activations, gradients, optimizer state and workspace, and
  also heap that glibc keeps after tensors are freed (``MALLOC_MMAP_THRESHOLD_=65536`` makes it
  return large blocks at once, so the growth is the live peak; :func:`command` records it).

Output: a run writes into a folder under ``runs/bench/`` (untracked); a tracked file under
``docs/`` is written only when asked (``--publish``), and then only the run's own marked section
of it (:func:`write_section`), so the hand-written text around a table survives a re-run.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
DOCS = REPO / "docs"
RUNS = REPO / "runs" / "bench"


# ----------------------------------------------------------------------------- timers
def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles (seconds) of repeated timings, and the timings."""
    ts = sorted(float(t) for t in times)
    if not ts:
        raise ValueError("no timings to summarize: pass at least one repeat")
    q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else ts * 3
    return {"median_s": statistics.median(ts), "min_s": ts[0], "max_s": ts[-1], "q1_s": q1,
            "q3_s": q3, "n": len(ts), "times_s": ts}


def time_calls(fn: Callable[[], object], *, repeats: int, warmup: int = 1,
               sync: Callable[[], None] | None = None,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; :func:`summarize`."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return summarize(times)


def rss_mb() -> float:
    """Peak resident set of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Case:
    """One measured step: ``step()`` runs it once; ``info()`` (after the timing) adds facts to
    the result, e.g. the bytes a step must move."""

    step: Callable[[], object]
    device: str = "cpu"
    info: Callable[[], dict[str, Any]] = field(default=lambda: {})


def measure(case: Case, *, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Peak memory over the first step, then :func:`time_calls` over the following ones."""
    import torch

    cuda = case.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    base = rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    case.step()
    sync()
    mem = ((torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if cuda
           else rss_mb() - base)
    res = time_calls(case.step, repeats=repeats, warmup=max(0, warmup - 1), sync=sync)
    return {**res, "time_s": res["median_s"], "mem_mb": mem, **case.info()}


# ----------------------------------------------------------------------------- fresh process
def run_fresh(builder: str, cfg: dict[str, Any], *, timeout: float,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Measure ``builder(cfg)`` in a new process; the result dict, or ``{"error": ...}`` (a
    failed or timed-out case is a result, not a crash). ``cfg`` takes ``threads`` (0: torch's
    default), ``repeats`` and ``warmup``."""
    try:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), builder,
                              json.dumps(cfg)], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f}s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}


def _child(builder: str, cfg_json: str) -> None:
    # this checkout's lrm and lra first, whatever is installed
    sys.path[:0] = [str(REPO), str(SCRIPTS)]
    cfg = json.loads(cfg_json)
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    module, _, name = builder.partition(":")
    case = getattr(importlib.import_module(module), name)(cfg)
    res = measure(case, repeats=cfg.get("repeats", 3), warmup=cfg.get("warmup", 1))
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- provenance
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command(script: str, argv: Sequence[str]) -> str:
    """The command line that reproduces a run, with the allocator setting that changes what
    the memory column means."""
    cmd = f"python {script} {shlex.join(argv)}".rstrip()
    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    return f"MALLOC_MMAP_THRESHOLD_={mmap} {cmd}" if mmap else cmd


def provenance(script: str, argv: Sequence[str], *, threads: int, device: str = "cpu"
               ) -> dict[str, Any]:
    """What a reader needs to judge a number: command, torch, machine, threads, date."""
    import torch

    where = (f"GPU {torch.cuda.get_device_name()}" if device.startswith("cuda")
             else f"CPU {cpu_model()}, {os.cpu_count()} cores")
    return {"command": command(script, argv), "torch": torch.__version__, "device": where,
            "threads": threads or torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def provenance_lines(p: dict[str, Any]) -> list[str]:
    return [f"Command: `{p['command']}`  ",
            f"torch {p['torch']}; {p['device']}; {p['threads']} torch thread(s); {p['date']}."]


# ----------------------------------------------------------------------------- output
def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def run_dir(mode: str, out: Path | None) -> Path:
    """The folder a run writes into: ``out``, or a new one under ``runs/bench/``. A folder
    inside ``docs/`` is refused: tracked docs are written only by ``--publish``."""
    if out is None:
        out = RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{mode}"
    if _inside(out, DOCS):
        raise SystemExit(f"--out {out} is inside docs/, whose files are tracked: a run writes "
                         "into a folder of its own (leave --out out for one under runs/bench/), "
                         "and --publish DOC writes its section into a doc.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def markers(tag: str) -> tuple[str, str]:
    return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


def write_section(path: Path, tag: str, body: str) -> None:
    """Put ``body`` between the ``tag`` markers of the Markdown file ``path``: the section
    replaces an earlier one with the same tag, else it is appended (a new file is created).
    Everything outside the markers is kept."""
    begin, end = markers(tag)
    section = f"{begin}\n\n{body.strip()}\n\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python scripts/measure.py MODULE:BUILDER CONFIG_JSON (run by "
                         "measure.run_fresh; the benchmarks are in scripts/bench.py)")
    _child(sys.argv[1], sys.argv[2])
