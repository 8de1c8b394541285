"""``lra leaderboard``: train a grid of mixers x LRA tasks and write the leaderboard.

    lra leaderboard --quick                                  every mixer, generated tasks, CPU-sized
    lra leaderboard --quick --mixers s4d --tasks listops --max-steps 600 --setting cpu-10min
    lra leaderboard --mixers attention s4 --tasks listops text --data-dir data/lra_release
    lra leaderboard --render                                 only rewrite the table and plot

Each run of the grid is ``lra fit`` then ``lra test`` on the best checkpoint, both in one child
process (``python -m lra.leaderboard --worker RUN_DIR``) started for that run alone, so a mixer
that crashes, runs out of memory or hangs (killed after ``--timeout`` seconds) becomes an
``error`` cell and the grid goes on. A mixer that fails to import or build is caught before a
process is started. The run folder ``<runs-dir>/<setting>/<mixer>-<task>-<time>/`` keeps the
exact configs (``fit.yaml``, ``test.yaml``: ``lra fit --config fit.yaml`` reruns it), the CSV
metrics and the checkpoints.

Results go to a JSON store (``docs/leaderboard_runs.json``): one record per run, keyed by
mixer x task x setting. Re-running appends; nothing is deleted. The table shows the newest
record of each key; older ones stay in the store. ``docs/leaderboard.md`` is then regenerated
from the store: the published numbers (with their sources), one table per setting with our
test and best-validation accuracy beside the majority-class baseline of the same test set, the
run details (steps, wall time, device, command), and ``docs/leaderboard.png``. Text between
``<!-- notes -->`` and ``<!-- /notes -->`` in an existing leaderboard.md is kept.

Settings. ``--quick`` (setting ``quick``) uses ``configs/lra/quick/<task>.yaml``: a 2-layer,
d=64 bidirectional model, 100 steps and at most 1.5 minutes of training per run, on small sets
generated into ``--data-dir`` (default ``data/lra_quick``) with ``lra generate`` when missing
(sizes in :data:`QUICK_DATA`), one torch thread per run (``--threads``). A quick run is thus
bounded: 1.5 minutes of training (checked after every step; the validation at the stop
comes on top), then the test, and a kill after 4 minutes of wall time. Measured on a shared
2-core CPU: 19 s to 186 s per run, 25 minutes for the 7 mixers x 2 tasks grid.

Without ``--quick`` (setting ``full``) a run uses the LRA recipe of
``configs/lra/<task>.yaml`` and the real data in ``--data-dir`` (default ``data/lra_release``).
``--recipe s4`` layers a mixer's own recipe, ``configs/lra/s4/<task>.yaml``, over the task
config (its mixer becomes the default of ``--mixers``).
``--setting NAME`` files runs under another name (e.g. a longer CPU run); ``--set key=value``
overrides any config entry (``--set model.model.d_model=128``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TASK_ORDER = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
TASK_NAMES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
              "pathfinder": "Pathfinder", "pathx": "Path-X"}
GENERATED = ("listops", "pathfinder")  # the tasks `lra generate` can make
STORE_SCHEMA = 1
NOTES_BEGIN, NOTES_END = "<!-- notes -->", "<!-- /notes -->"

# Published test accuracy (%); None is FAIL (chance). avg over six tasks counts FAIL as 50.
# Numbers and sources as collected in the project's reference notes on LRA.
PUBLISHED: list[dict[str, Any]] = [
    {"model": "Transformer", "source": "Tay et al., Long Range Arena (ICLR 2021), Table 1",
     "acc": {"listops": 36.37, "text": 64.27, "retrieval": 57.46, "image": 42.44,
             "pathfinder": 71.40, "pathx": None}, "avg": 53.66},
    {"model": "S4 (v2)", "source": "Gu et al., S4 (ICLR 2022), Table 4",
     "acc": {"listops": 59.60, "text": 86.82, "retrieval": 90.90, "image": 88.65,
             "pathfinder": 94.20, "pathx": 96.35}, "avg": 86.09},
    {"model": "S4D-LegS", "source": "Gu et al., S4D (NeurIPS 2022)",
     "acc": {"listops": 60.47, "text": 86.18, "retrieval": 89.46, "image": 88.19,
             "pathfinder": 93.06, "pathx": 91.95}, "avg": 84.89},
    {"model": "S5", "source": "Smith et al., S5 (ICLR 2023), Table 1",
     "acc": {"listops": 62.15, "text": 89.31, "retrieval": 91.40, "image": 88.00,
             "pathfinder": 95.33, "pathx": 98.58}, "avg": 87.46},
    {"model": "Mega", "source": "Ma et al., Mega (ICLR 2023), Table 2",
     "acc": {"listops": 63.14, "text": 90.43, "retrieval": 91.25, "image": 90.44,
             "pathfinder": 96.01, "pathx": 97.98}, "avg": 88.21},
]

# What `--quick` generates (with `lra generate`) when the data is missing. Short ListOps
# expressions (LRA: 500-2000 tokens) keep a CPU step cheap; Pathfinder keeps LRA's settings.
QUICK_DATA: dict[str, list[str]] = {
    "listops": ["--n-train", "4000", "--n-val", "500", "--n-test", "500",
                "--min-length", "20", "--max-length", "200"],
    "pathfinder": ["--resolution", "32", "--contour-length", "14", "--n-images", "2500",
                   "--per-batch", "500"],
}
QUICK_BUDGET_MINUTES = 1.5  # training time cap per quick run (Lightning max_time)
QUICK_TIMEOUT_S = 240  # hard kill of a quick run's process (start + fit + test)


# ================================================================================ the store
def load_store(path: str | Path) -> list[dict[str, Any]]:
    """All run records in the store (oldest first); an absent file is an empty store."""
    p = Path(path)
    if not p.is_file():
        return []
    data = json.loads(p.read_text(encoding="utf-8"))
    if isinstance(data, list):  # tolerate a bare list
        return data
    return list(data.get("runs", []))


def merge_runs(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """``old`` then ``new``: nothing is dropped (an identical record is not added twice)."""
    out = list(old)
    seen = {json.dumps(r, sort_keys=True, default=str) for r in out}
    for r in new:
        s = json.dumps(r, sort_keys=True, default=str)
        if s not in seen:
            out.append(r)
            seen.add(s)
    return out


def save_store(path: str | Path, runs: list[dict[str, Any]]) -> None:
    """Write the store atomically (a killed write never leaves half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"schema": STORE_SCHEMA, "runs": runs}, indent=1, default=str)
                   + "\n", encoding="utf-8")
    tmp.replace(p)


def add_runs(path: str | Path, new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``new`` into the store at ``path`` (re-read just before writing) and return it."""
    runs = merge_runs(load_store(path), new)
    save_store(path, runs)
    return runs


def run_key(r: dict[str, Any]) -> tuple[str, str, str, bool]:
    # a self-pretrained run (model.init_from) is a row of its own beside the scratch run
    return (r["mixer"], r["task"], r["setting"], bool(r.get("pretrained")))


def row_label(r: dict[str, Any]) -> str:
    """The mixer, marked ``+ SPT`` when the run was fine-tuned from ``lra pretrain``."""
    return r["mixer"] + (" + SPT" if r.get("pretrained") else "")


def latest(runs: Iterable[dict[str, Any]]
           ) -> dict[tuple[str, str, str, bool], dict[str, Any]]:
    """The newest record of every mixer x task x setting x pretrained (by ``date``; later in
    the list wins a tie)."""
    best: dict[tuple[str, str, str, bool], dict[str, Any]] = {}
    for r in runs:
        k = run_key(r)
        if k not in best or str(r.get("date", "")) >= str(best[k].get("date", "")):
            best[k] = r
    return best


# ============================================================================ configuration
def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; nested dicts merge, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def task_config(task: str, quick: bool, config_dir: Path) -> dict[str, Any]:
    folder = config_dir / "lra" / ("quick" if quick else "")
    path = folder / f"{task}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config for task {task!r} at {path}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _max_time(minutes: float) -> str:
    s = max(1, round(minutes * 60))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def recipe_config(recipe: str, task: str, config_dir: Path) -> dict[str, Any]:
    """``configs/lra/<recipe>/<task>.yaml``: a mixer's own recipe, layered over the task's."""
    path = config_dir / "lra" / recipe / f"{task}.yaml"
    if not path.is_file():
        have = sorted(p.name for p in (config_dir / "lra").iterdir()
                      if p.is_dir() and p.name != "quick")
        raise FileNotFoundError(f"no {recipe!r} recipe for task {task!r} at {path}; recipes: "
                                f"{have}")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data = cfg.get("data")
    if isinstance(data, dict):
        # a recipe says `data: {batch_size: 32}` (jsonargparse applies it to the data class's
        # init_args when configs are layered on the command line); spell that out here
        loose = {k: v for k, v in data.items() if k not in ("class_path", "init_args")}
        cfg["data"] = {k: v for k, v in data.items() if k in ("class_path", "init_args")}
        cfg["data"]["init_args"] = {**cfg["data"].get("init_args", {}), **loose}
    return cfg


def run_config(task: str, mixer: str, *, quick: bool, data_dir: str | None,
               max_steps: int | None, budget_minutes: float | None, run_dir: Path,
               overrides: dict[str, Any], config_dir: Path, n_evals: int = 4,
               recipe: str | None = None) -> dict[str, Any]:
    """The complete ``lra fit`` config of one run (written to ``run_dir/fit.yaml``)."""
    cfg = task_config(task, quick, config_dir)
    if recipe:
        cfg = deep_merge(cfg, recipe_config(recipe, task, config_dir))
    cfg = deep_merge(cfg, {"model": {"model": {"mixer": mixer}}})
    if data_dir is not None:
        cfg = deep_merge(cfg, {"data": {"init_args": {"data_dir": str(data_dir)}}})
    trainer: dict[str, Any] = {}
    if max_steps is not None:
        trainer.update(max_steps=int(max_steps), max_epochs=-1)
    if budget_minutes is not None:
        trainer["max_time"] = _max_time(budget_minutes)
    cfg = deep_merge(cfg, {"trainer": trainer})
    cfg = deep_merge(cfg, overrides)
    steps = int(cfg.get("trainer", {}).get("max_steps", -1) or -1)
    if steps > 0:
        # validate n_evals times, on global steps (epochs of small sets are short), the last
        # validation at the last step; warmup at most a tenth of the run
        every = max(1, steps // n_evals)
        cfg["trainer"].update(val_check_interval=every, check_val_every_n_epoch=None)
        model = cfg.setdefault("model", {})
        model["warmup_steps"] = min(int(model.get("warmup_steps", 1000)), max(1, steps // 10))
    cfg["trainer"]["logger"] = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                 "init_args": {"save_dir": str(run_dir), "name": "",
                                               "version": "fit"}}]
    cfg["checkpoint"] = {"dirpath": str(run_dir / "checkpoints"), "monitor": "val/acc",
                         "mode": "max", "save_top_k": 1, "save_last": True,
                         "every_n_train_steps": None, "filename": "best-{step}"}
    return cfg


# ================================================================================ data
def ensure_generated(task: str, data_dir: Path, spec: Sequence[str] | None = None) -> str:
    """Generate a small ``task`` set into ``data_dir`` with ``lra generate`` unless it is there.

    Returns a one-line description of the data for the leaderboard.
    """
    from lra.data.generate import main as generate

    args = list(spec if spec is not None else QUICK_DATA[task])
    stamp = data_dir / f".generated-{task}.json"
    if task == "listops":
        present = (data_dir / "listops-1000" / "basic_test.tsv").is_file()
    else:
        # any difficulty counts: a run may ask for another contour length than 14
        present = any((data_dir / "pathfinder32").glob("curv_*/metadata"))
    if not present:
        print(f"[leaderboard] generating {task} into {data_dir}: lra generate {task} "
              f"--out {data_dir} {' '.join(args)}", flush=True)
        t0 = time.time()
        generate([task, "--out", str(data_dir), *args, "--quiet"])
        stamp.write_text(json.dumps({"args": args, "seconds": round(time.time() - t0, 1)}))
    if stamp.is_file():
        args = json.loads(stamp.read_text())["args"]
        return f"generated: lra generate {task} {' '.join(args)}"
    return f"files in {data_dir}"


def task_facts(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """Instantiate the run's DataModule (same arguments, so the child reuses its cache) and
    return its model hints and the majority-class baseline of its test split."""
    import importlib

    module, cls = data_cfg["class_path"].rsplit(".", 1)
    dm = getattr(importlib.import_module(module), cls)(**data_cfg.get("init_args", {}))
    dm.setup("test")

    def class_counts(split: str) -> dict[int, int]:
        vals, cnt = dm.datasets[split].targets.unique(return_counts=True)
        return {int(v): int(n) for v, n in zip(vals, cnt, strict=True)}

    counts, train_counts = class_counts("test"), class_counts("train")
    train_major = max(train_counts, key=train_counts.get)
    n_test = sum(counts.values())
    major = max(counts, key=counts.get)
    return {"hints": dm.model_hints(), "n_test": n_test,
            "sizes": {s: len(dm.datasets[s]) for s in ("train", "val", "test")},
            "majority": counts[major] / n_test, "majority_class": major,
            # what always answering the *training* set's most frequent class scores on test
            "train_majority_on_test": counts.get(train_major, 0) / n_test}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# =========================================================================== one run (child)
def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], name: str) -> list[tuple[int, float]]:
    """(training steps done, value) of every row that has ``name``.

    Lightning's CSVLogger writes a metric logged after optimizer step n (counting from 1) with
    ``step`` n - 1, so the steps done are the logged step + 1.
    """
    out = []
    for r in rows:
        v = r.get(name, "")
        if v not in ("", None):
            out.append((int(float(r.get("step") or 0)) + 1, float(v)))
    return out


def _steps_done(rows: list[dict[str, str]]) -> int | None:
    steps = [int(float(r["step"])) + 1 for r in rows if r.get("step") not in ("", None)]
    return max(steps) if steps else None


def worker(run_dir: str | Path) -> None:
    """Child process: ``lra fit --config fit.yaml``, then ``lra test`` on the best checkpoint."""
    import torch

    from lra.cli import main as lra

    if os.environ.get("LRA_THREADS"):
        torch.set_num_threads(int(os.environ["LRA_THREADS"]))
    run_dir = Path(run_dir)
    info: dict[str, Any] = {}
    t0 = time.time()
    lra(["fit", "--config", str(run_dir / "fit.yaml")])
    info["fit_s"] = round(time.time() - t0, 1)
    ckpts = run_dir / "checkpoints"
    best = sorted(ckpts.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = ckpts / "last.ckpt"
    if not best and not last.is_file():
        raise RuntimeError(f"fit wrote no checkpoint to {ckpts} (did validation ever run?)")
    ckpt = best[-1] if best else last
    info["ckpt"] = str(ckpt)
    t0 = time.time()
    lra(["test", "--config", str(run_dir / "test.yaml"), "--ckpt_path", str(ckpt)])
    info["test_s"] = round(time.time() - t0, 1)
    (run_dir / "worker.json").write_text(json.dumps(info, indent=1))


# ========================================================================== one run (parent)
WORKER: list[str] = [sys.executable, "-m", "lra.leaderboard", "--worker"]


def _tail(text: str, n: int = 600) -> str:
    """The last exception of a log (its ``SomeError: ...`` line and what follows), else the
    last lines."""
    import re

    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b", lines[i]):
            return " | ".join(lines[i:])[:n]
    return " | ".join(lines[-3:])[-n:]


def _launch(run_dir: Path, timeout: float, threads: int | None = None
            ) -> tuple[int | None, str, float]:
    """Run the worker in its own process group; kill the whole group on timeout."""
    log = run_dir / "worker.log"
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(LRA_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([*WORKER, str(run_dir)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(REPO), env=env, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log.read_text(encoding="utf-8", errors="replace"), time.time() - t0


def _record_base(mixer: str, task: str, setting: str, cfg: dict[str, Any] | None,
                 extra: dict[str, Any]) -> dict[str, Any]:
    m = (cfg or {}).get("model", {}).get("model", {})
    init_from = (cfg or {}).get("model", {}).get("init_from")
    tr = (cfg or {}).get("trainer", {})
    return {
        "mixer": mixer, "task": task, "setting": setting,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "status": "error", "error": None, "best_val": None, "test": None,
        "model": {k: m.get(k) for k in ("d_model", "n_layers", "bidirectional", "mixer_kwargs")
                  if k in m},
        "lr": (cfg or {}).get("model", {}).get("lr"),
        "batch_size": (cfg or {}).get("data", {}).get("init_args", {}).get("batch_size"),
        "max_steps": tr.get("max_steps"), "max_time": tr.get("max_time"),
        "pretrained": bool(init_from), "init_from": init_from,
        **extra,
    }


def _reserve_dir(parent: Path, name: str) -> Path:
    """Create and return ``parent/name`` (or ``name-2``, ``name-3``...): two grids started in the
    same second, in parallel, never share a run folder."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run folder {parent / name}-N")


def run_one(mixer: str, task: str, *, setting: str, quick: bool, data_dir: Path,
            max_steps: int | None, budget_minutes: float | None, runs_dir: Path,
            overrides: dict[str, Any], timeout: float, config_dir: Path,
            threads: int | None = None, extra: dict[str, Any] | None = None,
            recipe: str | None = None) -> dict[str, Any]:
    """Train and test one mixer on one task; always returns a record (status ok or error)."""
    extra = dict(extra or {})
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = _reserve_dir((runs_dir / setting).resolve(), f"{mixer}-{task}-{stamp}")
    cfg = None
    try:
        cfg = run_config(task, mixer, quick=quick, data_dir=str(data_dir), max_steps=max_steps,
                         budget_minutes=budget_minutes, run_dir=run_dir, overrides=overrides,
                         config_dir=config_dir, recipe=recipe)
        rec = _record_base(mixer, task, setting, cfg, extra)
        facts = task_facts(cfg["data"])
        rec.update(majority=facts["majority"], majority_class=facts["majority_class"],
                   n_test=facts["n_test"], sizes=facts["sizes"],
                   train_majority_on_test=facts["train_majority_on_test"])
        # build the model here first: a mixer that does not import or build fails in a second
        from lra.module import merge_hints
        from lrm import LRModel, ModelConfig

        model_cfg = merge_hints(ModelConfig.from_dict(cfg["model"].get("model", {})),
                                facts["hints"])
        rec["params"] = sum(p.numel() for p in LRModel(model_cfg).parameters())
    except Exception as err:  # any failure is this run's error row
        rec = _record_base(mixer, task, setting, cfg, extra)
        rec["error"] = f"{type(err).__name__}: {err}"[:600]
        print(f"[leaderboard] {mixer} x {task}: error before training: {rec['error']}",
              flush=True)
        run_dir.rmdir()
        return rec
    (run_dir / "fit.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    test_cfg = copy.deepcopy(cfg)
    test_cfg["trainer"]["logger"][0]["init_args"]["version"] = "test"
    (run_dir / "test.yaml").write_text(yaml.safe_dump(test_cfg, sort_keys=False))
    rec["run_dir"] = str(run_dir)
    rec["command"] = (f"lra fit --config {run_dir}/fit.yaml && lra test --config "
                      f"{run_dir}/test.yaml --ckpt_path <best checkpoint>")
    print(f"[leaderboard] {mixer} x {task} ({setting}): training in {run_dir}", flush=True)
    rc, log, wall = _launch(run_dir, timeout, threads)
    rec["wall_s"] = round(wall, 1)
    info = {}
    if (run_dir / "worker.json").is_file():
        info = json.loads((run_dir / "worker.json").read_text())
    rec.update({k: info.get(k) for k in ("fit_s", "test_s")})
    fit_rows = _read_metrics(run_dir / "fit" / "metrics.csv")
    rec["steps"] = _steps_done(fit_rows)
    val = _column(fit_rows, "val/acc")
    test = _column(_read_metrics(run_dir / "test" / "metrics.csv"), "test/acc")
    if val:
        step, acc = max(val, key=lambda sv: (sv[1], -sv[0]))
        rec.update(best_val=acc, best_val_step=step, val_curve=val)
    if test:
        rec["test"] = test[-1][1]
    if rc is None:
        rec["error"] = f"timeout: killed after {timeout:.0f} s"
    elif rc != 0:
        rec["error"] = f"worker exited {rc}: {_tail(log)}"
    elif rec["test"] is None:
        rec["error"] = "no test/acc in the test metrics"
    else:
        rec["status"] = "ok"
    msg = rec["error"] or f"test {rec['test']:.4f}, best val {rec['best_val']}"
    print(f"[leaderboard] {mixer} x {task}: {msg} ({wall:.0f} s)", flush=True)
    return rec


def run_grid(mixers: Sequence[str], tasks: Sequence[str], *, setting: str, quick: bool,
             data_dir: Path, max_steps: int | None, budget_minutes: float | None,
             runs_dir: Path, store: Path, overrides: dict[str, Any] | None = None,
             timeout: float = QUICK_TIMEOUT_S, config_dir: Path = REPO / "configs",
             command: str | None = None, note: str | None = None,
             threads: int | None = None, recipe: str | None = None) -> list[dict[str, Any]]:
    """Run every mixer x task; each finished record is added to the store at once."""
    data: dict[str, str] = {}
    for task in tasks:
        if quick and task in GENERATED:
            try:
                data[task] = ensure_generated(task, data_dir)
            except Exception as err:  # the runs report the missing data
                data[task] = f"generation failed: {type(err).__name__}: {err}"
        else:
            data[task] = f"files in {data_dir}"
    extra = {"device": device_name(), "commit": git_commit(), "grid_command": command,
             "note": note, "threads": threads or _threads(), "recipe": recipe}
    records = []
    for task in tasks:
        for mixer in mixers:
            rec = run_one(mixer, task, setting=setting, quick=quick, data_dir=data_dir,
                          max_steps=max_steps, budget_minutes=budget_minutes,
                          runs_dir=runs_dir, overrides=overrides or {}, timeout=timeout,
                          config_dir=config_dir, threads=threads,
                          extra={**extra, "data": data[task]}, recipe=recipe)
            records.append(rec)
            add_runs(store, [rec])
    return records


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ============================================================================ the markdown
def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else \
        f"{100 * x:.{digits}f}"


def _minutes(max_time: Any) -> Any:
    """``"DD:HH:MM:SS"`` -> ``"8.5 min"`` (anything else unchanged)."""
    try:
        d, h, m, sec = (int(x) for x in str(max_time).split(":"))
    except ValueError:
        return max_time
    return f"{(d * 86400 + h * 3600 + m * 60 + sec) / 60:g} min"


def _range(values: Iterable[Any]) -> str:
    vals = sorted({v for v in values if v is not None}, key=str)
    if not vals:
        return "?"
    if all(isinstance(v, (int, float)) for v in vals) and len(vals) > 1:
        return f"{min(vals)}–{max(vals)}"
    return ", ".join(str(v) for v in vals)


def published_table(tasks: Sequence[str] = TASK_ORDER) -> str:
    head = "| model | " + " | ".join(TASK_NAMES[t] for t in tasks) + " | avg | source |"
    lines = [head, "|" + "---|" * (len(tasks) + 3)]
    for row in PUBLISHED:
        cells = ["FAIL" if row["acc"].get(t) is None else f"{row['acc'][t]:.2f}" for t in tasks]
        lines.append(f"| {row['model']} | " + " | ".join(cells)
                     + f" | {row['avg']:.2f} | {row['source']} |")
    return "\n".join(lines)


def setting_caption(setting: str, recs: list[dict[str, Any]]) -> str:
    steps = _range(r.get("steps") for r in recs if r.get("status") == "ok")
    d = _range(r.get("model", {}).get("d_model") for r in recs)
    layers = _range(r.get("model", {}).get("n_layers") for r in recs)
    bi = _range(r.get("model", {}).get("bidirectional") for r in recs)
    devices = _range(r.get("device") for r in recs)
    threads = _range(r.get("threads") for r in recs)
    budget = _range(_minutes(r.get("max_time")) for r in recs if r.get("max_time"))
    max_steps = _range(r.get("max_steps") for r in recs)
    batch = _range(r.get("batch_size") for r in recs)
    lr = _range(r.get("lr") for r in recs)
    kind = "short CPU run" if all(str(r.get("device", "")).startswith("CPU") for r in recs) \
        else "run"
    return (f"**{setting}** — {kind}: {steps} training steps (max_steps {max_steps}, time cap "
            f"{budget} per run), d={d}, {layers} layers, bidirectional={bi}, batch {batch}, "
            f"lr {lr}; device: {devices}, {threads} torch thread(s) per run.")


def ours_table(recs: list[dict[str, Any]]) -> str:
    tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in recs)]
    tasks += sorted({r["task"] for r in recs} - set(tasks))
    mixers = sorted({row_label(r) for r in recs})  # "m" and "m + SPT" side by side
    by = {(row_label(r), r["task"]): r for r in recs}
    lines = ["| mixer | " + " | ".join(f"{TASK_NAMES.get(t, t)} test / best val"
                                        for t in tasks) + " |",
             "|" + "---|" * (len(tasks) + 1)]
    for m in mixers:
        cells = []
        for t in tasks:
            r = by.get((m, t))
            if r is None:
                cells.append("")
            elif r.get("status") != "ok":
                cells.append("error: " + str(r.get("error", "?")).split(":")[0][:40])
            else:
                cells.append(f"{_pct(r['test'])} / {_pct(r.get('best_val'))}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    maj = []
    for t in tasks:
        vals = {round(r["majority"], 4) for r in recs if r["task"] == t and r.get("majority")}
        maj.append(" / ".join(_pct(v) for v in sorted(vals)) or "–")
    lines.append("| *majority class (test set)* | " + " | ".join(maj) + " |")
    return "\n".join(lines)


def details_table(recs: list[dict[str, Any]]) -> str:
    lines = ["| mixer | task | status | steps | lr | wall s (fit / test) | params "
             "| best val (step) | test | majority | data (train/val/test) | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (TASK_ORDER.index(r["task"])
                                         if r["task"] in TASK_ORDER else 99, row_label(r))):
        status = "ok" if r.get("status") == "ok" else \
            "error: " + str(r.get("error")).replace("|", "\\|").replace("\n", " ")[:300]
        wall = "–" if r.get("wall_s") is None else \
            f"{r['wall_s']:.0f} ({r.get('fit_s') or '–'} / {r.get('test_s') or '–'})"
        sizes = r.get("sizes") or {}
        size = "/".join(str(sizes.get(s, "?")) for s in ("train", "val", "test"))
        best = "–" if r.get("best_val") is None else \
            f"{_pct(r['best_val'])} ({r.get('best_val_step')})"
        lines.append(
            f"| {row_label(r)} | {r['task']} | {status} | {r.get('steps') or '–'} | "
            f"{r.get('lr') or '–'} | {wall} | "
            f"{r.get('params') or '–'} | {best} | {_pct(r.get('test'))} | "
            f"{_pct(r.get('majority'))} | {r.get('data', '')} ({size}) | {r.get('date', '')} |")
    return "\n".join(lines)


def render_markdown(runs: list[dict[str, Any]], notes: str | None = None,
                    plot_name: str | None = "leaderboard.png", store_name: str = "") -> str:
    """The whole leaderboard page from the store's records (newest per key)."""
    newest = list(latest(runs).values())
    settings = sorted({r["setting"] for r in newest})
    out = ["# LRA leaderboard", "",
           "Generated by `lra leaderboard` (lra/leaderboard.py) from the run store"
           + (f" `{store_name}`" if store_name else "")
           + "; the newest run of each mixer × task × setting is shown, older runs stay in the "
           "store. Accuracy in %. **Our numbers are short runs with tiny models and small "
           "generated data sets unless the setting says otherwise: they show that a mixer "
           "trains on the task, not its LRA accuracy.** They are not comparable to the "
           "published rows, which are full LRA training runs.", "",
           "## Published results (test accuracy, %)", "",
           "Full LRA runs as published; FAIL = chance; avg over six tasks counts FAIL as 50.",
           "", published_table(), ""]
    out += ["## Our runs", ""]
    if not newest:
        out += ["No runs yet: `lra leaderboard --quick`.", ""]
    for s in settings:
        recs = [r for r in newest if r["setting"] == s]
        out += [f"### Setting `{s}`", "", setting_caption(s, recs), ""]
        cmds = sorted({r.get("grid_command") for r in recs if r.get("grid_command")})
        if cmds:
            out += ["Command" + ("s" if len(cmds) > 1 else "") + ": "
                    + "; ".join(f"`{c}`" for c in cmds), ""]
        notes_s = sorted({r.get("note") for r in recs if r.get("note")})
        out += [f"Note: {n}" for n in notes_s] + ([""] if notes_s else [])
        out += [ours_table(recs), "", "<details><summary>run details</summary>", "",
                details_table(recs), "", "</details>", ""]
    if plot_name:
        out += [f"![leaderboard]({plot_name})", ""]
    out += [NOTES_BEGIN, notes.strip() if notes else "", NOTES_END, ""]
    return "\n".join(out)


def read_notes(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return None


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy per task: published models (grey) beside our newest runs per setting, with
    the majority-class baseline of our test set as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    newest = [r for r in latest(runs).values() if r.get("status") == "ok"]
    tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in newest)] or list(TASK_ORDER)
    settings = sorted({r["setting"] for r in newest})
    n_bars = len(PUBLISHED) + max([sum(r["task"] == t for r in newest) for t in tasks] or [0])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 1.6 + 0.3 * n_bars),
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, t in zip(axes[0], tasks, strict=True):
        labels, values, cols = [], [], []
        for row in PUBLISHED:
            v = row["acc"].get(t)
            labels.append(f"{row['model']} (paper)")
            values.append(50.0 if v is None else v)
            cols.append("0.7")
        maj = []
        for i, s in enumerate(settings):
            for r in sorted((r for r in newest if r["task"] == t and r["setting"] == s),
                            key=row_label):
                labels.append(f"{row_label(r)} [{s}]")
                values.append(100 * r["test"])
                cols.append(colours[i % len(colours)])
                if r.get("majority"):
                    maj.append(100 * r["majority"])
        y = range(len(values))
        ax.barh(list(y), values, color=cols)
        for yi, v in zip(y, values, strict=True):
            ax.text(v + 1, yi, f"{v:.1f}", va="center", fontsize=7)
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        for m in sorted(set(round(v, 1) for v in maj)):
            ax.axvline(m, ls="--", color="k", lw=1)
        if maj:
            ax.text(min(maj), len(values) - 0.4, " majority class (our test set)", fontsize=7,
                    va="bottom")
        ax.set_xlim(0, 100)
        ax.set_title(TASK_NAMES.get(t, t))
        ax.set_xlabel("test accuracy (%)")
    fig.suptitle("LRA: published (grey, full training) vs lrm runs (colour; see setting)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(store: Path, out: Path, plot_path: Path | None) -> None:
    runs = load_store(store)
    rel_plot = None
    if plot_path is not None:
        plot(runs, plot_path)
        rel_plot = os.path.relpath(plot_path, out.parent)
    store_name = str(store.resolve().relative_to(REPO)) if store.resolve().is_relative_to(REPO) \
        else str(store)
    text = render_markdown(runs, read_notes(out), rel_plot, store_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"[leaderboard] wrote {out}" + (f" and {plot_path}" if plot_path else ""), flush=True)


# ================================================================================== CLI
def _mixer_names() -> list[str]:
    import lrm

    return lrm.available()


def _recipe_mixer(recipe: str, config_dir: Path) -> str:
    """The mixer a recipe names (the same in each of its task files)."""
    for f in sorted((config_dir / "lra" / recipe).glob("*.yaml")):
        mixer = (yaml.safe_load(f.read_text()) or {}).get("model", {}).get("model", {}).get(
            "mixer")
        if mixer:
            return mixer
    raise SystemExit(f"no recipe files naming a mixer in {config_dir / 'lra' / recipe}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lra leaderboard", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true",
                    help="tiny models, generated data, few steps (setting 'quick')")
    ap.add_argument("--mixers", nargs="+", default=None, help="default: every registered mixer")
    ap.add_argument("--tasks", nargs="+", default=None, choices=TASK_ORDER,
                    help="default: listops pathfinder with --quick, all six otherwise")
    ap.add_argument("--recipe", default=None,
                    help="layer configs/lra/RECIPE/<task>.yaml over the task config (e.g. s4)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="training steps per run (quick default: the quick config's 100)")
    ap.add_argument("--budget-minutes", type=float, default=None,
                    help=f"training-time cap per run (quick default {QUICK_BUDGET_MINUTES})")
    ap.add_argument("--timeout", type=float, default=None,
                    help=f"kill a run's process after this many seconds (quick default "
                         f"{QUICK_TIMEOUT_S}; else 2 x budget + 5 min, or none)")
    ap.add_argument("--data-dir", default=None,
                    help="data root (quick default data/lra_quick, generated when missing; "
                         "else data/lra_release)")
    ap.add_argument("--setting", default=None, help="name runs are filed under "
                    "(default quick / full)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config entry, e.g. "
                    "model.model.d_model=128 (repeatable)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (quick default 1: on a shared CPU box one "
                         "thread per process avoids oversubscription; 0 = torch's default)")
    ap.add_argument("--note", default=None, help="a sentence stored with the runs and shown")
    ap.add_argument("--out", default="docs/leaderboard.md")
    ap.add_argument("--store", default=None, help="default: <out stem>_runs.json")
    ap.add_argument("--plot", default=None, help="default: <out stem>.png; 'none' for no plot")
    ap.add_argument("--runs-dir", default="runs/leaderboard")
    ap.add_argument("--config-dir", default=str(REPO / "configs"))
    ap.add_argument("--render", action="store_true", help="only rewrite the page from the store")
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        return worker(argv[1])
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    store = Path(args.store) if args.store else out.with_name(out.stem + "_runs.json")
    plot_path = None if args.plot == "none" else (
        Path(args.plot) if args.plot else out.with_suffix(".png"))
    if not args.render:
        quick = args.quick
        if args.recipe and args.quick:
            raise SystemExit("--recipe layers a full recipe; it does not combine with --quick")
        mixers = args.mixers or ([_recipe_mixer(args.recipe, Path(args.config_dir))]
                                 if args.recipe else _mixer_names())
        tasks = args.tasks or (list(GENERATED) if quick else list(TASK_ORDER))
        data_dir = Path(args.data_dir or ("data/lra_quick" if quick else "data/lra_release"))
        budget = args.budget_minutes if args.budget_minutes is not None else (
            QUICK_BUDGET_MINUTES if quick else None)
        timeout = args.timeout or (QUICK_TIMEOUT_S if quick and args.budget_minutes is None
                                   else (2 * 60 * budget + 300 if budget else 10 ** 9))
        run_grid(mixers, tasks, setting=args.setting or ("quick" if quick else "full"),
                 quick=quick, data_dir=data_dir.resolve(), max_steps=args.max_steps,
                 budget_minutes=budget, runs_dir=Path(args.runs_dir), store=store,
                 overrides=parse_set(args.overrides), timeout=timeout,
                 config_dir=Path(args.config_dir), note=args.note,
                 command="lra leaderboard " + shlex.join(argv),
                 threads=(1 if quick else 0) if args.threads is None else args.threads,
                 recipe=args.recipe)
    write_outputs(store, out, plot_path)
    return None


if __name__ == "__main__":
    main()
