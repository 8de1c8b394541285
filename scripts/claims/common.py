"""What the claim checks share: the command line (help with defaults, threads, seed, an output
file), a seeded LM-head model, the MQAR train/test split, the timed quick-train call, the
report, printed and optionally written with the command that made it, and the protocol that
lets a check decide (below).

The protocol (``Check``, ``run_check``, ``render``). A check decides only if it could have come
out either way, so every check

1. has a positive control: a model known to learn the task (usually full attention inside its
   training length) must reach a stated level on both seeds, else the check says "redesign
   needed" and gives no verdict;
2. sweeps the learning rate per model (at least three rates; when the best is at an end of the
   sweep the sweep is extended in that direction, up to ``max_extend`` times, and a best still
   at an end is flagged), then re-runs the best rate on a second seed; both seeds are shown.
   A tie for the best goes to the lowest of the tied rates (so a tie that includes the lowest
   rate extends the sweep downwards, one run that cannot change the choice; the rule is kept
   because the stored checks' chosen rates depend on it);
3. keeps every finished run in a run store (a JSON-lines file, ``--store``), so a killed or
   stopped check resumes where it stopped: a run already in the store (same check, model,
   rate, seed and settings) is read back, not trained again, and the run that was training
   goes on from its last checkpoint (:func:`train`);
4. records each run's learning curve, and flags a run still improving over its last fifth (the
   steps were too few to read an end point; the steps of a check are set from these curves);
5. states each claim as holds / holds in part / does not hold from comparisons that must hold
   on every seed, beside the control and the check's wall time. A comparison that asks a model
   to beat another by a margin the metric has no room for (both already within the margin of
   the metric's ceiling, 1.0 for an accuracy) cannot hold whatever the models do: its claim
   reads "redesign needed (at the ceiling)", a harder task being the fix, not "does not hold".

A claim check stays one readable script; this module holds only what every one of them would
otherwise repeat. Import it as ``from common import ...`` (``scripts/claims/`` is the script's
own folder, so it is on ``sys.path``); importing it also puts this checkout's ``lrm`` and
``lra`` first on the path.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import math
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path: this checkout's packages first)

import lrm  # noqa: E402
from lra.data.recall_tasks import mqar  # noqa: E402
from lra.leaderboard.arena import progress_text  # noqa: E402  (the arena's progress line)
from lra.leaderboard.store import checkpoint_file, git_commit  # noqa: E402
from lra.leaderboard.sweep import still_improving  # noqa: E402  (shared with the arena)
from lra.quick import fit  # noqa: E402

TEST_SEED_OFFSET = 10_000  # held-out sequences: the training seed + this


def parser(doc: str, *, threads: int = 1, seed: int | None = 0,
           out: bool = False) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first paragraph and whose help shows every
    default; with the options every claim takes (``--threads``, ``--seed``, ``--out``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=threads,
                   help="torch threads (1 is fair on a shared CPU)")
    if seed is not None:
        p.add_argument("--seed", type=int, default=seed, help="seed of data, weights and batches")
    if out:
        p.add_argument("--out", default=None,
                       help="also write the report (with the command) to this file")
    return p


def setup(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, set the torch threads, and record the command and the start time
    (``args.command``, ``args.t_start``)."""
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    args.command = f"python {shown} {shlex.join(sys.argv[1:] if argv is None else argv)}".strip()
    args.t_start = time.time()
    return args


def build_lm(*, d: int, layers: int, vocab: int, seed: int, mixer: str | None = None,
             mixer_kwargs: dict[str, Any] | None = None, **config: Any) -> lrm.LRModel:
    """``lrm.LRModel`` with an LM head, its weights drawn after ``torch.manual_seed(seed)``;
    ``config``: any further ``ModelConfig`` field (``mlp_ratio``, ``pattern``, ...)."""
    torch.manual_seed(seed)
    if mixer is not None:
        config["mixer"] = mixer
    return lrm.LRModel(lrm.ModelConfig(d_model=d, n_layers=layers, vocab_size=vocab, head="lm",
                                       mixer_kwargs=mixer_kwargs or {}, **config))


def mqar_split(n_train: int, n_test: int, seq_len: int, *, vocab: int, kv: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MQAR training and held-out sets (``lra.data.recall_tasks.mqar``; the test seed is offset)."""
    x, y = mqar(n_train, seq_len, vocab_size=vocab, num_kv_pairs=kv, seed=seed)
    xt, yt = mqar(n_test, seq_len, vocab_size=vocab, num_kv_pairs=kv,
                  seed=seed + TEST_SEED_OFFSET)
    return x, y, xt, yt


# The checkpoint files of the protocol run this thread is training (set by sweep_model while
# a check with a run store trains a run): the base path and how many fits the run has begun.
_RUN_CHECKPOINT: contextvars.ContextVar[tuple[Path, list[int]] | None] = contextvars.ContextVar(
    "run_checkpoint", default=None)


# The name and the log of the protocol run this thread is training: train() reports its
# progress there (a quarter of the steps at a time), so a long check is not silent for an hour.
_RUN_LABEL: contextvars.ContextVar[tuple[str, Callable[[str], None]] | None] = (
    contextvars.ContextVar("run_label", default=None))


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **fit_kwargs: Any
          ) -> tuple[list[float], float]:
    """``lra.quick.fit``; returns the losses and the wall seconds it took.

    Inside a protocol run the fit logs its progress every quarter of its steps (the check's
    log, under the run's name).

    Inside a protocol run of a check with a run store, the n-th call of the run checkpoints to
    its own file (``runs/claims/checkpoints/<store>-<run>-<n>.pt``), so a check killed mid-run
    continues the fit it was in when it runs again (the run's earlier fits, whose checkpoints
    were removed when they finished, train again: the same arithmetic, so the same result)."""
    slot = _RUN_CHECKPOINT.get()
    if slot is not None and "checkpoint" not in fit_kwargs:
        base, begun = slot
        fit_kwargs["checkpoint"] = base.with_name(f"{base.stem}-{begun[0]}.pt")
        begun[0] += 1
    named = _RUN_LABEL.get()
    if named is not None and "on_progress" not in fit_kwargs:
        (label, log), steps = named, int(fit_kwargs["steps"])
        fit_kwargs["on_progress"] = lambda step, loss, per: log(f"{label}: " + progress_text(
            {"step": step, "steps": steps, "loss": loss, "s_per_step": per}))
        fit_kwargs["progress_every"] = max(1, steps // 4)
    t0 = time.time()
    losses = fit(model, x, y, **fit_kwargs)
    return losses, time.time() - t0


def report(text: str, args: argparse.Namespace) -> None:
    """Print the report; with ``--out``, also write it under a line with the command."""
    print(text)
    if getattr(args, "out", None):
        Path(args.out).write_text(f"Command: `{args.command}`\n\n{text.strip()}\n",
                                  encoding="utf-8")


# ----------------------------------------------------------------------------- the protocol

HOLDS, IN_PART, NOT_HOLD, REDESIGN = "holds", "holds in part", "does not hold", "redesign needed"
AT_CEILING = "redesign needed (at the ceiling)"


def protocol_options(p: argparse.ArgumentParser, *, lrs: Sequence[float]) -> None:
    """The options of a check that runs the protocol: ``--lrs``, ``--seeds``, ``--smoke`` and
    ``--json`` (every run, curves included, for a later look)."""
    p.add_argument("--lrs", nargs="+", type=float, default=list(lrs),
                   help="learning rates swept per model (at least 3; extended at an end)")
    p.add_argument("--seeds", nargs=2, type=int, default=[0, 1],
                   help="the sweep's seed, and the second seed the best rate is re-run on")
    p.add_argument("--max-extend", type=int, default=2,
                   help="rates added at an end of the sweep while the best sits there")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes and steps: checks the plumbing in seconds, decides nothing")
    p.add_argument("--json", type=Path, default=None, help="write every run to this file")
    p.add_argument("--store", type=Path, default=None,
                   help="the run store: finished runs are appended, and runs already in it are "
                        "read back instead of trained (default: runs/claims/<check>.jsonl)")
    p.add_argument("--fresh", action="store_true",
                   help="train every run again (the store is still appended to)")
    p.add_argument("--only-run", nargs=2, action="append", type=float, default=None,
                   metavar=("LR", "SEED"),
                   help="train only this run (rate, seed) of every model of the check into the "
                        "store and judge nothing (repeatable): lets a second process fill a "
                        "long sweep beside the first, which then reads the run back")


# settings that do not change what a run computes: left out of a stored run's key. The last
# four choose which models, mixers, parts or tasks of a check run, not how any one run trains
# (the check's name carries its part or task), so a check run in pieces reuses its runs.
_NOT_IN_KEY = {"threads", "json", "out", "store", "fresh", "lrs", "seeds", "max_extend", "jobs",
               "command", "t_start", "runs_dir", "worker", "only_run",
               "models", "mixers", "part", "tasks"}


def _portable(value: Any) -> Any:
    """A path inside the repository as a relative path string, so that a stored run's key is
    the same in every clone (and names no machine's folders); anything else unchanged."""
    if isinstance(value, Path | str) and Path(value).is_absolute():
        try:
            return Path(value).resolve().relative_to(REPO).as_posix()
        except ValueError:  # outside the repository: kept as given
            return str(value)
    return value


def _key_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a run's key holds: those that change what it computes, and of those only
    the set ones (an option added later with default None leaves older keys as they were)."""
    return {k: _portable(v) for k, v in sorted(settings.items())
            if k not in _NOT_IN_KEY and v is not None}


class RunStore:
    """Finished runs of one check script, one JSON object per line: ``{"key": ..., "run": ...,
    "commit": ...}``. The key is the check's name, the model, the rate, the seed and the
    script's settings (its options, less those that only say how to run it), so a run is read
    back only where it would be trained the same way. A line cut short by a kill is skipped."""

    def __init__(self, path: Path, settings: dict[str, Any], *, fresh: bool = False,
                 only: Sequence[tuple[float, int]] = ()) -> None:
        self.path, self.settings = Path(path), _key_settings(settings)
        self.only = [(float(lr), int(seed)) for lr, seed in only]  # --only-run: these alone
        self.commit = git_commit()  # of the code the runs of this invocation train with
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()  # checks with jobs > 1 finish runs from several threads
        self._read_to = 0  # bytes of the file read so far (later appends: read on a miss)
        self._lines = 0  # lines read so far, for the messages
        if self.path.is_file() and fresh:  # --fresh: what is there now is not reused
            data = self.path.read_bytes()
            self._read_to, self._lines = len(data), data.count(b"\n")  # messages keep numbering
        self._read_new()

    def _read_new(self) -> None:
        """Read the runs appended to the file since the last read (whole lines only: a line
        another process is still writing is read next time; one cut short by a kill is
        skipped)."""
        if not self.path.is_file() or self.path.stat().st_size <= self._read_to:
            return
        with self.path.open("rb") as f:
            f.seek(self._read_to)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]
        self._read_to += len(data)
        for line in data.decode("utf-8").splitlines():
            self._lines += 1
            try:
                rec = json.loads(line)
                run = Run(**rec["run"])
                run.curve = [tuple(x) for x in run.curve]
                self._runs[self._normal(rec["key"])] = run
            except (ValueError, KeyError, TypeError):
                print(f"[store] {self.path}:{self._lines}: not a stored run (cut short?), "
                      "skipped", file=sys.stderr)

    @staticmethod
    def _normal(key: str) -> str:
        """A stored key as :meth:`key` would write it now (keys written before a setting left
        the key still match)."""
        k = json.loads(key)
        k["settings"] = _key_settings(k.get("settings", {}))
        return json.dumps(k, sort_keys=True, default=str)

    def key(self, check: str, model: str, lr: float, seed: int) -> str:
        return json.dumps({"check": check, "model": model, "lr": lr, "seed": seed,
                           "settings": self.settings}, sort_keys=True, default=str)

    def get(self, key: str) -> Run | None:
        """The stored run of ``key``, or None; on a miss the file is read again first, so a
        run that another process (``--only-run``, ``--models``) finished since is found."""
        with self._lock:
            if key not in self._runs:
                self._read_new()
            return self._runs.get(key)

    def checkpoint_base(self, key: str) -> Path:
        """Where the run ``key`` keeps its checkpoints while it trains (:func:`train` numbers
        one file per fit after this name): under ``runs/claims/checkpoints/`` (or
        ``LRA_CLAIM_CHECKPOINTS``), never beside a store kept in ``docs/``."""
        return checkpoint_file(key, REPO / "runs" / "claims" / "checkpoints",
                               "LRA_CLAIM_CHECKPOINTS", stem=f"{self.path.stem}-")

    def add(self, key: str, run: Run) -> None:
        rec = asdict(run)
        rec.pop("from_store")
        line = json.dumps({"key": key, "run": rec, "commit": self.commit}) + "\n"
        with self._lock:
            # a process beside this one may have stored the same run while this one waited
            # for it (spt.py's run lock): one line per run, the first one kept
            self._read_new()
            if key in self._runs:
                return
            self._runs[key] = run
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:  # a kill loses at most this line
                f.write(line)


def run_store(args: argparse.Namespace) -> RunStore:
    """The check's run store from its parsed options (``--store``, ``--fresh``); the default
    file is named after the script (``runs/claims/<script>.jsonl``, ``-smoke`` for smoke runs)."""
    stem = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "check"
    path = args.store or REPO / "runs" / "claims" / (
        stem + ("-smoke" if getattr(args, "smoke", False) else "") + ".jsonl")
    only = getattr(args, "only_run", None) or []
    for lr, seed in only:
        if lr <= 0 or seed != int(seed):
            raise SystemExit(f"--only-run {lr:g} {seed:g}: give a positive learning rate and "
                             "an integer seed, e.g. --only-run 0.003 1")
    if only and (getattr(args, "out", None) or getattr(args, "json", None)):
        raise SystemExit("--only-run judges nothing, so it writes no report: leave out --out "
                         "and --json (the check's full command writes them from the store)")
    return RunStore(path, vars(args), fresh=getattr(args, "fresh", False), only=only)


@dataclass
class Run:
    """One training run: ``scores`` by metric name (the selection metric among them), the
    learning ``curve`` as (step, value) pairs (a loss: lower is better), and its wall time."""

    scores: dict[str, float]
    curve: list[tuple[int, float]] = field(default_factory=list)
    secs: float = 0.0
    lr: float = 0.0
    seed: int = 0
    from_store: bool = False  # read back from the run store by this invocation (never stored)


@dataclass
class Control:
    """The positive control: ``model``'s ``metric`` must reach ``level`` on both seeds."""

    model: str
    level: float
    metric: str = "acc"
    why: str = ""


@dataclass
class Cmp:
    """One comparison: ``a`` − ``b`` ≥ ``margin``, where a and b are (model, metric) or, for b,
    a fixed level. ``ceiling`` is the metric's best possible value (1.0 for the accuracies every
    check reports; None for an unbounded metric): with a positive margin, an a and b both within
    the margin of it leave the comparison no room to hold."""

    a: tuple[str, str]
    b: tuple[str, str] | float
    margin: float = 0.0
    ceiling: float | None = 1.0


@dataclass
class Claim:
    """A claim and the comparisons that make it: it holds when every comparison holds on every
    seed, does not hold when no comparison holds on any seed, and holds in part otherwise."""

    text: str
    parts: list[Cmp]

    def models(self) -> set[str]:
        """Every model the claim compares (a fixed level names none)."""
        return ({c.a[0] for c in self.parts}
                | {c.b[0] for c in self.parts if isinstance(c.b, tuple)})


@dataclass
class Check:
    """A claim check under the protocol; ``train(model, lr, seed) -> Run``."""

    name: str
    models: list[str]
    lrs: Sequence[float]
    train: Callable[[str, float, int], Run]
    control: Control
    claims: list[Claim]
    seeds: Sequence[int] = (0, 1)
    metric: str = "acc"  # the metric the learning rate is chosen by (higher is better)
    max_extend: int = 2
    select: dict[str, str] = field(default_factory=dict)  # per-model selection metric
    lrs_by_model: dict[str, Sequence[float]] = field(default_factory=dict)
    jobs: int = 1  # runs of the first sweep at a time (for trains that run in a child process)
    store: RunStore | None = None  # finished runs: read back instead of trained again
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)


@dataclass
class ModelResult:
    sweep: dict[float, Run]  # first seed, by learning rate
    best_lr: float
    at_end: bool  # the best rate is still at an end of the (extended) sweep
    runs: list[Run]  # the best rate, one run per seed
    metric: str = "acc"  # the metric the rate was chosen by

    def values(self, metric: str) -> list[float]:
        return [r.scores.get(metric, float("nan")) for r in self.runs]


@dataclass
class CheckResult:
    name: str
    models: dict[str, ModelResult]
    control: Control
    control_values: list[float]
    control_ok: bool
    verdicts: list[tuple[str, str, list[str]]]  # (claim, verdict, one line per comparison)
    wall_s: float
    only_runs: bool = False  # --only-run: the named runs were trained, nothing was judged


def _score(run: Run, metric: str) -> float:
    v = run.scores.get(metric, float("nan"))
    return -math.inf if math.isnan(v) else v


def train_one(check: Check, model: str, lr: float, seed: int) -> Run:
    """One run of ``model`` at rate ``lr`` and ``seed``: read back from the check's store, or
    trained (from its last checkpoint if a killed run left one) and appended to it."""
    key = check.store.key(check.name, model, lr, seed) if check.store else ""
    run = check.store.get(key) if check.store else None
    stored = run is not None
    if stored:
        run.from_store = True
    else:
        t0 = time.time()
        token = _RUN_CHECKPOINT.set((check.store.checkpoint_base(key), [0])
                                    if check.store else None)
        named = _RUN_LABEL.set((f"[{check.name}] {model} lr {lr:.3g} seed {seed}",
                                check.log))
        try:
            run = check.train(model, lr, seed)
        finally:
            _RUN_LABEL.reset(named)
            _RUN_CHECKPOINT.reset(token)
        run.secs, run.lr, run.seed = run.secs or time.time() - t0, lr, seed
        if check.store:
            check.store.add(key, run)
    check.log(f"[{check.name}] {model} lr {lr:.3g} seed {seed}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in run.scores.items())
              + f" ({run.secs:.0f} s{', from the store' if stored else ''})")
    return run


def sweep_model(check: Check, model: str) -> ModelResult:
    """The learning-rate sweep of one model on the first seed, extended at an end while the
    best sits there, then the best rate on the other seeds."""
    metric = check.select.get(model, check.metric)
    lrs = sorted(check.lrs_by_model.get(model, check.lrs))
    if len(lrs) < 3:
        raise ValueError(f"{check.name}: the sweep of {model} has {len(lrs)} learning rates "
                         f"({lrs}); the protocol needs at least 3 so that an interior best can "
                         "be told from an edge one")
    seed0 = check.seeds[0]

    def one(lr: float, seed: int) -> Run:
        return train_one(check, model, lr, seed)

    if check.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(check.jobs) as pool:
            sweep = dict(zip(lrs, pool.map(lambda lr: one(lr, seed0), lrs), strict=True))
    else:
        sweep = {lr: one(lr, seed0) for lr in lrs}
    for _ in range(check.max_extend):
        grid = sorted(sweep)
        best = max(grid, key=lambda lr: _score(sweep[lr], metric))
        if best == grid[0]:
            new = grid[0] * grid[0] / grid[1]  # one more step of the same ratio, downwards
        elif best == grid[-1]:
            new = grid[-1] * grid[-1] / grid[-2]
        else:
            break
        sweep[new] = one(new, seed0)
    grid = sorted(sweep)
    best = max(grid, key=lambda lr: _score(sweep[lr], metric))
    runs = [sweep[best]] + [one(best, s) for s in check.seeds[1:]]
    return ModelResult(sweep=dict(sorted(sweep.items())), best_lr=best,
                       at_end=best in (grid[0], grid[-1]), runs=runs, metric=metric)


def _values(models: dict[str, ModelResult], ref: tuple[str, str] | float) -> list[float]:
    if isinstance(ref, int | float):
        return [float(ref)]
    return models[ref[0]].values(ref[1])


def judge(claim: Claim, models: dict[str, ModelResult]) -> tuple[str, list[str]]:
    """(verdict, one line per comparison). A comparison holds when its worst seed pairing
    clears the margin, fails when even its best pairing does not, and is split otherwise; one
    that does not hold while every a and b is within its margin of the ceiling (no room to
    separate them) is at the ceiling, and so is its claim. An a that trails a b at the ceiling
    is a plain "does not hold"."""
    states, lines = [], []
    for c in claim.parts:
        a, b = _values(models, c.a), _values(models, c.b)
        worst, best = min(a) - max(b), max(a) - min(b)
        state = HOLDS if worst >= c.margin else NOT_HOLD if best < c.margin else IN_PART
        if (state != HOLDS and c.margin > 0 and c.ceiling is not None
                and all(v + c.margin > c.ceiling for v in a + b)):
            state = AT_CEILING  # both within the margin of the top: nothing to separate
        states.append(state)
        name_b = f"{c.b:.3g}" if isinstance(c.b, int | float) else f"{c.b[0]} {c.b[1]}"
        lines.append(f"{c.a[0]} {c.a[1]} ({' / '.join(f'{x:.3f}' for x in a)}) − {name_b} "
                     f"({' / '.join(f'{x:.3f}' for x in b)}) ≥ {c.margin:+.3g}: {state}")
    if AT_CEILING in states:
        return AT_CEILING, lines
    if all(s == HOLDS for s in states):
        return HOLDS, lines
    if all(s == NOT_HOLD for s in states):
        return NOT_HOLD, lines
    return IN_PART, lines


def run_check(check: Check) -> CheckResult:
    """Sweep every model (the control first), then judge the claims, unless the control failed.
    A claim that compares a model the check does not train is left out of the verdicts."""
    t0 = time.time()
    order = [check.control.model] + [m for m in check.models if m != check.control.model]
    models: dict[str, ModelResult] = {}
    if check.store is not None and check.store.only:  # --only-run: these runs, no verdict
        for m in order:
            runs = [train_one(check, m, lr, seed) for lr, seed in check.store.only]
            models[m] = ModelResult(sweep={r.lr: r for r in runs}, best_lr=runs[0].lr,
                                    at_end=False, runs=runs,
                                    metric=check.select.get(m, check.metric))
        return CheckResult(check.name, models, check.control, [], False, [],
                           time.time() - t0, only_runs=True)
    for m in order:
        models[m] = sweep_model(check, m)
    ctrl = models[check.control.model].values(check.control.metric)
    ok = all(v >= check.control.level for v in ctrl)
    verdicts = []
    for claim in check.claims:
        if not claim.parts or not claim.models() <= set(models):
            continue  # compares a model this run left out (e.g. --models): judged when it ran
        if ok:
            verdict, lines = judge(claim, models)
        else:
            verdict, lines = REDESIGN, [f"the control {check.control.model} reached "
                                        f"{' / '.join(f'{v:.3f}' for v in ctrl)} < "
                                        f"{check.control.level:.3g}: the check cannot decide"]
        verdicts.append((claim.text, verdict, lines))
    return CheckResult(check.name, models, check.control, ctrl, ok, verdicts, time.time() - t0)


def _curve_text(curve: Sequence[tuple[int, float]], points: int = 6) -> str:
    if not curve:
        return "–"
    stride = max(1, len(curve) // points)
    shown = list(curve[::stride])
    if shown[-1] != curve[-1]:
        shown.append(curve[-1])
    return ", ".join(f"{s}: {v:.2f}" for s, v in shown)


def render(res: CheckResult, metrics: Sequence[str] | None = None) -> str:
    """The markdown report: verdicts (or "redesign needed"), the control, the sweeps, both
    seeds of each best rate with their learning curves, and the wall time."""
    if metrics is None:  # every metric any model reported, in order of appearance
        metrics = list(dict.fromkeys(k for r in res.models.values() for k in r.runs[0].scores))

    def show(vals: list[float]) -> str:
        return " / ".join("–" if math.isnan(v) else f"{v:.3f}" for v in vals)

    if res.only_runs:
        lines = [f"## {res.name}", "", "Only the runs named by `--only-run` were trained (into "
                 "the run store); nothing is judged. The check's full command reads them back.",
                 "", "| model | lr | seed | " + " | ".join(metrics) + " | train s |",
                 "|---|---|---|" + "---|" * len(metrics) + "---|"]
        for m, r in res.models.items():
            for run in r.runs:
                cells = " | ".join(show([run.scores.get(k, float("nan"))]) for k in metrics)
                lines.append(f"| {m} | {run.lr:.3g} | {run.seed} | {cells} | {run.secs:.0f} |")
        return "\n".join(lines)
    c = res.control
    lines = [f"## {res.name}", "",
             f"Control: {c.model} {c.metric} {' / '.join(f'{v:.3f}' for v in res.control_values)}"
             f" (both seeds must reach {c.level:.3g}{'; ' + c.why if c.why else ''}): "
             f"{'passed' if res.control_ok else 'FAILED, redesign needed'}", ""]
    if res.verdicts:
        lines += ["| claim | verdict |", "|---|---|"]
        lines += [f"| {text} | **{verdict}** |" for text, verdict, _ in res.verdicts]
    else:  # a run of some of the models only (e.g. --models): nothing to judge yet
        lines.append("No claim judged: every claim compares a model this run left out.")
    lines.append("")
    for text, _, parts in res.verdicts:
        lines.append(f"- {text}: " + "; ".join(parts))
    lines += ["", "Learning-rate sweeps (first seed):", "",
              "| model | chosen by | lr: score | best lr |", "|---|---|---|---|"]
    for m, r in res.models.items():
        cells = ", ".join(f"{lr:.3g}: {run.scores.get(r.metric, float('nan')):.3f}"
                          for lr, run in r.sweep.items())
        flag = " (at an end of the sweep)" if r.at_end else ""
        lines.append(f"| {m} | {r.metric} | {cells} | {r.best_lr:.3g}{flag} |")
    lines += ["", "At the best rate, both seeds (values seed / seed):", "",
              "| model | lr | " + " | ".join(metrics)
              + " | train s | learning curve (step: training loss unless stated) |",
              "|---|---|" + "---|" * len(metrics) + "---|---|"]
    for m, r in res.models.items():
        cells = " | ".join(show(r.values(k)) for k in metrics)
        curves = "; ".join(f"seed {run.seed}: {_curve_text(run.curve)}"
                           + (" (still improving)" if still_improving(run.curve) else "")
                           for run in r.runs)
        secs = " / ".join(f"{run.secs:.0f}" for run in r.runs)
        lines.append(f"| {m} | {r.best_lr:.3g} | {cells} | {secs} | {curves} |")
    runs = [run for r in res.models.values() for run in [*r.sweep.values(), *r.runs[1:]]]
    stored = sum(run.from_store for run in runs)
    wall = f"Wall time of the check: {res.wall_s:.0f} s"
    if stored:  # the wall time then omits what those runs took when they were trained
        wall += (f" ({stored} of its {len(runs)} runs read back from the run store; the runs' "
                 f"own training times sum to {sum(run.secs for run in runs):.0f} s)")
    lines += ["", wall]
    return "\n".join(lines)


def dump(res: CheckResult, path: Path | None) -> None:
    """Every run, curves included, as JSON (for plots and later reading)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(res)
    for m in data["models"].values():
        m["sweep"] = {str(k): v for k, v in m["sweep"].items()}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def curve_of(losses: Sequence[float], points: int = 20) -> list[tuple[int, float]]:
    """A training loss curve as (step, mean loss over the steps since the last point)."""
    n = max(1, len(losses) // points)
    return [(min(i + n, len(losses)), sum(losses[i:i + n]) / len(losses[i:i + n]))
            for i in range(0, len(losses), n)]
