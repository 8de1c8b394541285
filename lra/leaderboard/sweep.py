"""The sweep protocol of both leaderboards (LRA and the recall arena): one mechanism, here.

A *cell* is one experiment up to its learning rate and seed (mixer x task x size x setting).
The protocol, as the efficient-sequence-model literature reports its numbers:

1. Every cell sweeps a list of learning rates chosen per mixer family (:data:`FAMILY_RATES`:
   at least three, neighbours at most 3x apart), on the first seed.
2. The best rate must not be at an end of the sweep: when it is, the sweep is extended by one
   rate in that direction (the next on the 1-3-10 ladder, :func:`ladder_step`), at most
   :attr:`Protocol.max_extensions` times per cell; the extension is recorded on its run
   (``"extension": "up"`` or ``"down"``). Ties are broken towards the middle of the sweep, so a
   task solved at every rate (MQAR by attention) is not extended for nothing.
3. The best rate of every headline cell is re-run on the other seeds (:attr:`Protocol.seeds`);
   the page shows every seed and their mean.
4. A run whose training loss went non-finite, or that the step guard stopped, is never a
   result (:func:`diverged`): it is listed as diverged, it is never the best rate, and it is
   not retried.

The state of a sweep is derived from the run store alone (:func:`plan`), so a grid can be filled
over several runs of the command: a rerun skips finished runs and continues where the store
stands. The suites supply three functions: the cell of a run (no lr, no seed), the key of
a run (every option that changes it, lr and seed included) and its score (the selection metric:
validation accuracy for LRA, test-set recall accuracy for the arena, as Zoology reports).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]

# Learning-rate lists per mixer family, each with its reason (shown on both pages). Neighbours
# are a half-decade apart on the field's 1-3-10 ladder (3x, or 3.3x from 3 to 10); the protocol
# extends a list whose best rate is at an end.
FAMILY_RATES: dict[str, tuple[tuple[float, ...], str]] = {
    "attention": ((3e-4, 1e-3, 3e-3),
                  "softmax attention trains at 1e-4 to 1e-3 at scale and at a few 1e-3 in "
                  "small models (Zoology's MQAR sweeps, LRA's 5e-4 to 1e-3); centred on 1e-3"),
    "ssm": ((1e-3, 3e-3, 1e-2),
            "diagonal and structured SSMs take larger rates (S4's LRA recipes use 1e-3 to 1e-2, "
            "their A and dt at 1e-3 on their own); centred on 3e-3"),
    "recurrent": ((1e-3, 3e-3, 1e-2),
                  "gated linear recurrences (Mamba, Mamba-2, Gated DeltaNet, Oryx, Titans) train "
                  "at 1e-3 to 1e-2 at these widths (Zoology and the GDN paper sweep this range; "
                  "the arena's earlier single rate was 3e-3); centred on 3e-3"),
}
MIXER_FAMILY: dict[str, str] = {
    "attention": "attention", "fox": "attention", "landmark": "attention",
    "s4": "ssm", "s4d": "ssm",
    "mamba": "recurrent", "mamba2": "recurrent", "gdn": "recurrent", "oryx": "recurrent",
    "titans": "recurrent",
}
DEFAULT_FAMILY = "recurrent"


def family(mixer: str) -> str:
    """The rate family of a registry name (an alias such as ``gdn:deltanet`` counts as its base
    name; a mixer not listed takes :data:`DEFAULT_FAMILY`)."""
    return MIXER_FAMILY.get(mixer.split(":")[0], DEFAULT_FAMILY)


def rates_for(mixer: str) -> list[float]:
    return list(FAMILY_RATES[family(mixer)][0])


def rates_table() -> str:
    """The markdown table of rate lists per family (both pages show it)."""
    lines = ["| family | mixers | learning rates | why |", "|---|---|---|---|"]
    for fam, (rates, why) in FAMILY_RATES.items():
        members = ", ".join(sorted(m for m, f in MIXER_FAMILY.items() if f == fam))
        lines.append(f"| {fam} | {members} | {', '.join(f'{r:g}' for r in rates)} | {why} |")
    return "\n".join(lines)


def ladder_step(lr: float, direction: int) -> float:
    """The next rate on the half-decade ladder (..., 1e-3, 3e-3, 1e-2, ...) above (+1) or below
    (-1) ``lr``: an extension lands where a field's sweep would have put it."""
    k = math.floor(math.log10(lr) + 1e-9)
    rungs = sorted({m * 10.0 ** e for e in (k - 1, k, k + 1) for m in (1, 3)})
    rungs = [float(f"{r:.3g}") for r in rungs]
    if direction > 0:
        return next(r for r in rungs if r > lr * (1 + 1e-9))
    return next(r for r in reversed(rungs) if r < lr * (1 - 1e-9))


@dataclass(frozen=True)
class Protocol:
    """How a cell is swept. ``seeds[0]`` sweeps the rates; the others re-run the best rate."""

    seeds: tuple[int, ...] = (0, 1)
    max_extensions: int = 2

    def describe(self) -> str:
        return (f"learning rates swept per cell on seed {self.seeds[0]}; a best rate at an end "
                f"of the sweep extends it by one rate (the next on the 1-3-10 ladder, at most "
                f"{self.max_extensions} per cell); the best rate re-run on seed"
                f"{'s' if len(self.seeds) > 2 else ''} "
                f"{', '.join(str(s) for s in self.seeds[1:])}; diverged runs never count")


PROTOCOL = Protocol()


# ================================================================================ results
def diverged(r: Record) -> int | None:
    """The first step whose training loss was not finite (NaN or inf), or None (-1: the final
    loss was not finite, step unknown). Such a run's accuracy means nothing: it is never a
    result, never the best rate, and the page lists it as diverged.

    A run that the step guard stopped (:mod:`lra.step_guard`: its gradients were not finite
    for many steps in a row) diverged too, from the first step of that streak, although its
    worker failed and its record is an error: retrying it at the same rate and seed would
    only diverge again, so the sweep counts it as tried (:func:`finished`)."""
    if r.get("diverged_at"):
        return int(r["diverged_at"])
    curve = r.get("loss_curve") or []
    bad = [step for step, loss in curve if loss is None or not math.isfinite(loss)]
    final = r.get("final_loss", 0.0)
    if bad or (final is not None and not math.isfinite(final)):
        return bad[0] if bad else -1
    if r.get("error"):
        from lra.step_guard import stopped_at  # here: the rest of this module needs no torch

        return stopped_at(r["error"])
    return None


def still_improving(curve: Sequence[Sequence[float]], rel: float = 0.05, *,
                    floor: float | None = None, rel_level: float = 0.1) -> bool:
    """True when a loss curve ((step, loss) pairs) was still falling at its end, so that more
    steps would have moved the end point: the run's budget, not the model, set its score.

    Compared are the mean loss of the last fifth and of the fifth before. The curve is still
    falling when that drop is more than ``rel`` of the whole curve's fall; or, with ``floor``
    given, when the loss before was still at least ``floor`` and the drop more than
    ``rel_level`` of it. The second clause catches a slow fall late in a long run, which the
    first measures against a large early fall and misses: an MQAR run whose cross-entropy on
    the queries went 5.5 -> 0.41 -> 0.29 over its last three fifths (85% accuracy, its other
    seed 97%) is not marked by the first clause and is by the second. Below ``floor`` the loss
    no longer moves the accuracy much, and small relative drops there are noise."""
    vals = [v for _, v in curve]
    n = len(vals) // 5
    if n == 0 or not all(math.isfinite(v) for v in vals):
        return False
    last, before = sum(vals[-n:]) / n, sum(vals[-2 * n:-n]) / n
    if before - last > rel * max(vals[0] - last, 0.0):
        return True
    return floor is not None and before >= floor and before - last > rel_level * before


def is_result(r: Record) -> bool:
    """A finished run that counts: status ok and not diverged."""
    return r.get("status") == "ok" and diverged(r) is None


def finished(r: Record) -> bool:
    """A run that needs no retry: a result, or a diverged run (a failure of the rate, not of
    the machine: an error such as a timeout or a crash is retried)."""
    return is_result(r) or diverged(r) is not None


def newest_by(records: Iterable[Record], key_of: Callable[[Record], Any]) -> dict[Any, Record]:
    """The newest record of every key (by ``date``; later in the list wins a tie)."""
    out: dict[Any, Record] = {}
    for r in records:
        k = key_of(r)
        if k not in out or str(r.get("date", "")) >= str(out[k].get("date", "")):
            out[k] = r
    return out


def pick_best(scores: dict[float, float]) -> float:
    """The best rate of ``{lr: score}``; ties go to the rate nearest the middle of the sweep, so
    an end is the best only when it beats every rate inside."""
    top = max(scores.values())
    rates = sorted(scores)
    mid = (len(rates) - 1) / 2
    tied = [i for i, lr in enumerate(rates) if scores[lr] >= top - 1e-12]
    return rates[min(tied, key=lambda i: (abs(i - mid), i))]


# ================================================================================ planning
@dataclass
class CellState:
    """Where one cell's sweep stands (:func:`plan`)."""

    cell: Any
    runs: list[Record]  # every run the protocol asks for so far (first seed, then the others)
    best_lr: float | None = None
    extended: list[str] | None = None  # "up"/"down" per extension, in order
    capped: bool = False  # the best rate is still at an end after max_extensions

    def rates(self, seed: int) -> list[float]:
        return sorted({r["lr"] for r in self.runs if r["seed"] == seed})


def plan(base_runs: Sequence[Record], records: Iterable[Record], *,
         cell_of: Callable[[Record], Any], key_of: Callable[[Record], Any],
         score: Callable[[Record], float | None], protocol: Protocol = PROTOCOL,
         headline: Callable[[Record], bool] = lambda r: True,
         attempted: Callable[[Any], bool] | None = None) -> dict[Any, CellState]:
    """Every cell's runs under the protocol, given the store's ``records``.

    ``base_runs`` are the first seed's runs at each cell's initial rates (dicts with ``lr`` and
    ``seed``). A run counts as attempted when the store has a finished record of its key (a
    result, or a diverged run) or ``attempted(key)`` says so (an error in this invocation); a
    cell is extended, or its best rate re-seeded, only once every run it has is attempted.
    """
    newest = newest_by((r for r in records if finished(r)), key_of)

    def tried(run: Record) -> bool:
        k = key_of(run)
        return k in newest or bool(attempted and attempted(k))

    cells: dict[Any, list[Record]] = {}
    for run in base_runs:
        cells.setdefault(cell_of(run), []).append(run)
    out: dict[Any, CellState] = {}
    for cell, runs in cells.items():
        runs = [dict(r, seed=protocol.seeds[0]) for r in runs]
        st = CellState(cell, runs, extended=[])
        out[cell] = st
        while all(tried(r) for r in st.runs):
            scores = {}
            for r in st.runs:
                rec = newest.get(key_of(r))
                if rec is not None and is_result(rec):
                    s = score(rec)
                    if s is not None and math.isfinite(s):
                        scores[r["lr"]] = s
            if not scores:
                break  # nothing to choose from: every rate failed or diverged
            best = pick_best(scores)
            rates = sorted(r["lr"] for r in st.runs)
            st.best_lr = best
            end = "up" if best == rates[-1] else "down" if best == rates[0] else None
            if end is None:
                break
            if len(st.extended) >= protocol.max_extensions:
                st.capped = True
                break
            new_lr = ladder_step(best, +1 if end == "up" else -1)
            template = max(st.runs, key=lambda r: r["lr"]) if end == "up" else \
                min(st.runs, key=lambda r: r["lr"])
            st.runs.append({**template, "lr": new_lr, "extension": end})
            st.extended.append(end)
        # the sweep is settled (every run attempted, no extension pending; a capped sweep's
        # best is still the cell's number): the best rate gets its other seeds
        if st.best_lr is not None and headline(runs[0]) and all(tried(r) for r in st.runs):
            template = next(r for r in st.runs if r["lr"] == st.best_lr)
            st.runs += [{**template, "seed": s, "extension": None} for s in protocol.seeds[1:]]
    return out


def pending(states: dict[Any, CellState], records: Iterable[Record], *,
            key_of: Callable[[Record], Any],
            attempted: Callable[[Any], bool] | None = None) -> list[Record]:
    """The runs of ``states`` without a finished record in the store, not yet attempted."""
    ok = {key_of(r) for r in records if finished(r)}
    out, seen = [], set()
    for st in states.values():
        for r in st.runs:
            k = key_of(r)
            if k not in ok and k not in seen and not (attempted and attempted(k)):
                seen.add(k)
                out.append(r)
    return out


def wait_child(proc: subprocess.Popen, deadline: float, *, every: float,
               tick: Callable[[], None] | None = None,
               kill: Callable[[], None] | None = None) -> int | None:
    """A run's child process: its exit code, or None once ``time.time()`` passes ``deadline``
    (then ``kill()``, default ``proc.kill()``, and the child is reaped). Every ``every`` seconds
    while it runs, ``tick()``: how both grids show a run in flight."""
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(every, deadline - time.time())))
        except subprocess.TimeoutExpired:
            if time.time() >= deadline:
                (kill or proc.kill)()
                proc.wait()
                return None
            if tick is not None:
                tick()


def each_finished(fn: Callable[[Any], Any], items: Sequence[Any], jobs: int
                  ) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` for every item, ``jobs`` at a time, in the order they finish (the
    one launcher of both grids: each run is its own child process, so the threads only wait).
    An exception, in a run or in the caller (Ctrl-C), cancels the runs not yet started."""
    pool = cf.ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in cf.as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def drive(base_runs: Sequence[Record], run: Callable[[Record], Record],
          load: Callable[[], list[Record]], *, cell_of: Callable[[Record], Any],
          key_of: Callable[[Record], Any], score: Callable[[Record], float | None],
          protocol: Protocol = PROTOCOL, headline: Callable[[Record], bool] = lambda r: True,
          jobs: int = 1, on_result: Callable[[Record, Record], None] | None = None,
          on_launch: Callable[[list[Record]], None] | None = None) -> list[Record]:
    """Run a grid under the protocol, ``jobs`` runs at a time: ``run(spec)`` trains one run and
    returns its record; ``on_result(spec, record)`` must put it in the store that ``load``
    reads. Returns the new records.

    The grid is re-planned from the store each time a run ends, and what the plan adds (an
    extension, a second seed) starts at once, so no worker waits for the slowest run of a
    round (planned in rounds, a grid's last 14-minute Titans run kept the other core idle).
    A cell is decided only once none of its runs is in flight: :func:`plan` counts a run as
    attempted when the store holds it or it ended in this call; a run in flight is neither.
    Each run is launched at most once per call, so a run that fails is tried once per
    invocation (a later invocation retries it) and the loop always ends. An exception, in a
    run or in the caller (Ctrl-C), cancels the runs not yet started.
    """
    ended: set[Any] = set()  # keys of the runs that ended in this call (ok or error)
    in_flight: dict[cf.Future, Record] = {}
    new: list[Record] = []
    pool = cf.ThreadPoolExecutor(max_workers=max(1, jobs))

    def start_pending() -> None:
        recs = load()
        states = plan(base_runs, recs, cell_of=cell_of, key_of=key_of, score=score,
                      protocol=protocol, headline=headline, attempted=ended.__contains__)
        flying = {key_of(r) for r in in_flight.values()}
        todo = pending(states, recs, key_of=key_of,
                       attempted=lambda k: k in ended or k in flying)
        if todo and on_launch is not None:
            on_launch(todo)
        for spec in todo:
            in_flight[pool.submit(run, spec)] = spec

    try:
        start_pending()
        while in_flight:
            done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                spec = in_flight.pop(fut)
                rec = fut.result()
                ended.add(key_of(spec))
                new.append(rec)
                if on_result is not None:
                    on_result(spec, rec)
            start_pending()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return new


@dataclass
class CellSummary:
    """What a page shows of one cell: the best rate, each seed's score there, the sweep."""

    cell: Any
    best: Record | None  # the first seed's record at the best rate
    seeds: dict[int, Record]  # seed -> record at the best rate (results only)
    rates: list[tuple[float, str]]  # (lr, "score" | "diverged" | "error" | "missing"), ext marked
    extensions: list[str]
    capped: bool

    def mean(self, score: Callable[[Record], float | None]) -> float | None:
        vals = [score(r) for r in self.seeds.values()]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None


def summarize(records: Iterable[Record], *, cell_of: Callable[[Record], Any],
              key_of: Callable[[Record], Any], score: Callable[[Record], float | None],
              protocol: Protocol = PROTOCOL) -> dict[Any, CellSummary]:
    """Every cell of the store: its best rate among the first seed's results (ties to the middle
    of its sweep) and the other seeds' results at that rate. Records without a ``seed`` (made
    before the protocol) count as the first seed."""
    recs = list(records)
    newest = newest_by(recs, key_of)
    by_cell: dict[Any, list[Record]] = {}
    for r in newest.values():
        by_cell.setdefault(cell_of(r), []).append(r)
    out: dict[Any, CellSummary] = {}
    first = protocol.seeds[0]
    for cell, rs in by_cell.items():
        sweep = [r for r in rs if r.get("seed", first) in (first, None)]
        scores = {r["lr"]: score(r) for r in sweep if is_result(r) and r.get("lr") is not None
                  and score(r) is not None}
        rates = []
        for r in sorted(sweep, key=lambda r: r.get("lr") or 0):
            what = "diverged" if diverged(r) is not None else \
                ("error" if r.get("status") != "ok" else "ok")
            rates.append((r.get("lr"), what + (f" ({r['extension']})" if r.get("extension")
                                                else "")))
        exts = [r["extension"] for r in sweep if r.get("extension")]
        if not scores:
            out[cell] = CellSummary(cell, None, {}, rates, exts, False)
            continue
        lr = pick_best(scores)
        best = next(r for r in sweep if r.get("lr") == lr and is_result(r))
        seeds = {r.get("seed", first) if r.get("seed") is not None else first: r
                 for r in rs if r.get("lr") == lr and is_result(r)}
        lrs = sorted(scores)
        capped = lr in (lrs[0], lrs[-1]) and len(lrs) > 1 and len(exts) >= protocol.max_extensions
        out[cell] = CellSummary(cell, best, seeds, rates, exts, capped)
    return out
