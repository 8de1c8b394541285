"""Running a leaderboard grid: one child process per run, each run's record into the store.

Each run is ``lra fit`` then ``lra test`` on the best checkpoint, both in one child process
(``python -m lra.leaderboard --worker RUN_DIR``) started for that run alone, so a mixer that
crashes, runs out of memory or hangs (killed after ``timeout`` seconds) becomes an ``error``
record and the grid goes on. A mixer that fails to import or build is caught before a process
is started. The run folder keeps the exact configs (``fit.yaml``, ``test.yaml``), the CSV
metrics and the checkpoints.

A killed grid loses at most 100 steps of each run in flight: ``last.ckpt`` is written every 100
steps (after the validation where one falls on the step), and the next invocation finds the
folder of an unfinished run of the same experiment (:func:`unfinished_run`) and resumes it
there (:func:`worker`): exactly, with the metrics logged before the kill kept and the time cap
counting the time before it. A run killed during its test pass resumes with nothing left to
train and is tested again from the start.
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from lra.leaderboard.store import (
    GENERATED,
    REPO,
    add_runs,
    device_name,
    git_commit,
    git_dirty,
    repo_relative,
)
from lra.leaderboard.sweep import wait_child

# What `--quick` generates (with `lra generate`) when the data is missing. Short ListOps
# expressions (LRA: 500-2000 tokens) keep a CPU step cheap; Pathfinder keeps LRA's settings.
QUICK_DATA: dict[str, list[str]] = {
    "listops": ["--n-train", "4000", "--n-val", "500", "--n-test", "500",
                "--min-length", "20", "--max-length", "200"],
    "pathfinder": ["--resolution", "32", "--contour-length", "14", "--n-images", "2500",
                   "--per-batch", "500"],
}
# Named settings beyond --quick: what each fills, with the command that fills it (both pages show
# them). Every mixer gets the same model (the quick configs' bidirectional 2-layer d = 64 encoder),
# so a row differs from another only by its mixer; each cell sweeps its family's learning rates
# (lra/leaderboard/sweep.py). Data is generated with `lra generate` into the setting's folder.
SETTINGS: dict[str, dict[str, Any]] = {
    # ListOps only: on the quick Pathfinder data (contour length 14, 2000 training images) no
    # mixer left chance in any CPU budget tried; the CPU Pathfinder row is `pathfinder-easy-bn`
    "cpu": {
        "about": "every mixer on generated ListOps (20-200 tokens), the same model for all (2 "
                 "layers, d = 64, bidirectional), 1000 steps or 15 minutes per run, one torch "
                 "thread, the learning-rate sweep; its Pathfinder row is the setting "
                 "`pathfinder-easy-bn` (no mixer tried left chance on LRA-difficulty "
                 "Pathfinder in the CPU budgets tried)",
        "tasks": ["listops"], "data_dir": "data/lra_quick", "data": QUICK_DATA,
        "max_steps": 1000, "budget_minutes": 15.0,
        "overrides": {"model": {"model": {"d_model": 64, "n_layers": 2}}},
    },
    "listops-lra": {
        "about": "every mixer on ListOps generated with the LRA release's settings (depth 10, "
                 "up to 10 arguments, 500-2000 tokens; 96000 / 2000 / 2000 expressions), the "
                 "same model for all (2 layers, d = 64), 2000 steps or 60 minutes per run, the "
                 "learning-rate sweep; on a CPU only S4D and S4 make their 2000 steps in the cap "
                 "(the others would stop after a quarter to two fifths of them and are left to a "
                 "GPU, `scripts/device/lra_grid.sh`), and only with the machine to themselves",
        # one run at a time on both cores: two single-thread runs side by side take 2.1 s a
        # step, and S4D's stopped at the cap after 1716 of 2000 steps
        "command": "lra leaderboard --setting listops-lra --mixers s4d s4 --publish --jobs 1 "
                   "--threads 2",
        "tasks": ["listops"], "data_dir": "data/lra_listops_lengths",
        "data": {"listops": ["--n-train", "96000", "--n-val", "2000", "--n-test", "2000",
                             "--min-length", "500", "--max-length", "2000", "--workers", "2"]},
        "max_steps": 2000, "budget_minutes": 60.0,
        "overrides": {"model": {"model": {"d_model": 64, "n_layers": 2}},
                      "data": {"init_args": {"seq_len": 2048}}},
    },
    # Pathfinder's question first: which mixer, if any, leaves chance on a CPU at the easiest
    # difficulty the generator makes? One rate per mixer (--no-sweep), a long budget, the curve.
    "pathfinder-probe": {
        "about": "Pathfinder at its easiest generated difficulty (32x32, contour length 6, the "
                 "release's curv_baseline), 80000 images (64000 / 8000 / 8000), the `cpu` "
                 "model (2 layers, d = 64, bidirectional), 4000 steps or 40 minutes per run, "
                 "one rate per mixer: does any mixer leave chance on a CPU",
        "command": "lra leaderboard --setting pathfinder-probe --mixers attention s4 s4d mamba2 "
                   "gdn --no-sweep --publish --jobs 2",
        "tasks": ["pathfinder"], "data_dir": "data/pf6",
        "data": {"pathfinder": ["--resolution", "32", "--contour-length", "6", "--n-images",
                                "80000", "--per-batch", "1000", "--workers", "2"]},
        "max_steps": 4000, "budget_minutes": 40.0,
        "overrides": {"model": {"model": {"d_model": 64, "n_layers": 2}},
                      "data": {"init_args": {"contour_length": 6}}},
    },
    # the probe stayed at chance for every mixer; the next easier task keeps LRA's geometry and
    # drops its 10 distractor paths, so only the two target paths remain
    "pathfinder-easy": {
        "about": "Pathfinder made easier than the release's easiest: 32x32, contour length 6, "
                 "no distractor paths (`lra generate pathfinder --distractors 0`), 80000 images "
                 "(64000 / 8000 / 8000), the `cpu` model (2 layers, d = 64, bidirectional), "
                 "4000 steps or 40 minutes per run, one rate per mixer: does any mixer leave "
                 "chance on a CPU when only the two target paths are drawn",
        "command": "lra leaderboard --setting pathfinder-easy --mixers s4d s4 attention "
                   "--no-sweep --publish --jobs 2",
        "tasks": ["pathfinder"], "data_dir": "data/pf6-easy",
        "data": {"pathfinder": ["--resolution", "32", "--contour-length", "6", "--distractors",
                                "0", "--n-images", "80000", "--per-batch", "1000", "--workers",
                                "2"]},
        "max_steps": 4000, "budget_minutes": 40.0,
        "overrides": {"model": {"model": {"d_model": 64, "n_layers": 2}},
                      "data": {"init_args": {"contour_length": 6, "distractors": 0}}},
    },
}
# both probes sat on the ln 2 plateau for their whole 40 minutes; this one asks whether it ends
# with a few times more images: the easy setting's data, model and loader, a longer budget, the
# fastest mixer's step
_easy = SETTINGS["pathfinder-easy"]
SETTINGS["pathfinder-long"] = {
    **_easy,
    "about": "the `pathfinder-easy` data and model (32x32, contour length 6, no distractor paths, "
             "64000 training images; 2 layers, d = 64, bidirectional), 12000 steps or 90 "
             "minutes per run, one rate: does the plateau at ln 2 end within hours of CPU for "
             "the fastest mixer",
    "command": "lra leaderboard --setting pathfinder-long --mixers s4d --no-sweep --publish",
    "max_steps": 12000, "budget_minutes": 90.0,
}
# a small CNN with BatchNorm solves the easy data within 800 steps where the same CNN without
# it can sit on ln 2 for 8000 (scripts/pathfinder_control.py), and S4's LRA recipes use
# BatchNorm: the easy probe again with norm = batchnorm in every block
SETTINGS["pathfinder-easy-bn"] = {
    **_easy,
    "about": "the `pathfinder-easy` setting (same data, model, 4000 steps or 40 minutes per run) "
             "with BatchNorm instead of LayerNorm in every block, as S4's LRA recipes "
             "normalise; the first generated Pathfinder a sequence mixer left chance on with "
             "a CPU, so it is the CPU Pathfinder row, with the learning-rate sweep (a "
             "`--no-sweep` run at one of the sweep's rates and seeds counts as that run)",
    # only S4D and S4 make the ~3000 steps S4D needed in the 40-minute cap on a CPU
    "command": "lra leaderboard --setting pathfinder-easy-bn --mixers s4d s4 --publish --jobs 2",
    "overrides": {**_easy["overrides"],
                  "model": {"model": {**_easy["overrides"]["model"]["model"],
                                      "norm": "batchnorm"}}},
}
QUICK_BUDGET_MINUTES = 1.5  # training time cap per quick run (Lightning max_time)
QUICK_TIMEOUT_S = 240  # hard kill of a quick run's process (start + fit + test)


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


def _causal_only(mixer: str) -> bool:
    """True for a mixer that only works in a causal model (its class says ``causal_only``)."""
    from lrm import registry

    try:
        return bool(getattr(registry.mixer_class(mixer), "causal_only", False))
    except (ImportError, AttributeError, ValueError):  # reported when the run builds it
        return False


def run_config(task: str, mixer: str, *, quick: bool, data_dir: str | None,
               max_steps: int | None, budget_minutes: float | None, run_dir: Path,
               overrides: dict[str, Any], config_dir: Path, n_evals: int = 4,
               recipe: str | None = None) -> dict[str, Any]:
    """The complete ``lra fit`` config of one run (written to ``run_dir/fit.yaml``)."""
    cfg = task_config(task, quick, config_dir)
    if recipe:
        cfg = deep_merge(cfg, recipe_config(recipe, task, config_dir))
    cfg = deep_merge(cfg, {"model": {"model": {"mixer": mixer}}})
    if cfg["model"]["model"].get("bidirectional") and _causal_only(mixer):
        # e.g. landmark attention: the task's bidirectional encoder becomes a causal one
        cfg["model"]["model"]["bidirectional"] = False
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
    # lra's CSVLogger keeps the rows of a killed run it resumes (Lightning's starts the file anew)
    cfg["trainer"]["logger"] = [{"class_path": "lra.csv_logger.CSVLogger",
                                 "init_args": {"save_dir": str(run_dir), "name": "",
                                               "version": "fit"}}]
    # last.ckpt every 100 steps (and at every validation, if validations come more often), the
    # best after each validation: a killed run loses at most 100 steps (unfinished_run)
    every_last = max(1, min(100, every)) if steps > 0 else 100
    cfg["checkpoint"] = {"dirpath": str(run_dir / "checkpoints"), "monitor": "val/acc",
                         "mode": "max", "save_top_k": 1, "save_last": True,
                         "every_n_train_steps": every_last, "filename": "best-{step}"}
    return cfg


# ================================================================================ data
def _without_workers(args: Sequence[str]) -> list[str]:
    """``lra generate`` arguments less ``--workers N``, which changes the speed, not the data."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        else:
            out.append(a)
    return out


def ensure_generated(task: str, data_dir: Path, spec: Sequence[str] | None = None) -> str:
    """Generate a small ``task`` set into ``data_dir`` with ``lra generate`` unless it is there.

    Returns a one-line description of the data for the leaderboard.
    """
    from lra.data.generate import main as generate

    args = list(spec if spec is not None else QUICK_DATA[task])
    stamp = data_dir / f".generated-{task}.json"
    if task == "listops":
        present = (data_dir / "listops-1000" / "basic_test.tsv").is_file()
        made_with = json.loads(stamp.read_text())["args"] if stamp.is_file() else args
        if present and _without_workers(made_with) != _without_workers(args):
            # generated here with other settings (sizes, lengths): the files hold another set
            print(f"[leaderboard] {data_dir} holds ListOps generated with other settings "
                  f"({' '.join(made_with)}); generating again", flush=True)
            present = False
    else:
        # any difficulty counts: a run may ask for another contour length than 14
        present = any((data_dir / "pathfinder32").glob("curv_*/metadata"))
    if not present:
        # the generators give the same files for any number of processes: use every core
        run = [*_without_workers(args), "--workers", str(max(1, os.cpu_count() or 1))]
        print(f"[leaderboard] generating {task} into {data_dir}: lra generate {task} "
              f"--out {data_dir} {' '.join(run)}", flush=True)
        t0 = time.time()
        generate([task, "--out", str(data_dir), *run, "--quiet"])
        stamp.write_text(json.dumps({"args": args, "seconds": round(time.time() - t0, 1)}))
    if stamp.is_file():
        args = json.loads(stamp.read_text())["args"]
        return f"generated: lra generate {task} {' '.join(args)}"
    return f"files in {repo_relative(data_dir)}"


def data_module(data_cfg: dict[str, Any]) -> Any:
    """The DataModule a run config's ``data`` entry names (``class_path`` and ``init_args``),
    built without reading any data."""
    import importlib

    module, cls = data_cfg["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**data_cfg.get("init_args", {}))


def task_facts(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """Instantiate the run's DataModule (same arguments, so the child reuses its cache) and
    return its model hints and the majority-class baseline of its test split."""
    dm = data_module(data_cfg)
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


def task_classes(task: str, config_dir: Path = REPO / "configs") -> int | None:
    """The number of classes the task's DataModule declares (None for a task without one)."""
    import importlib

    try:
        class_path = task_config(task, False, config_dir)["data"]["class_path"]
    except (FileNotFoundError, KeyError):
        return None
    module, cls = class_path.rsplit(".", 1)
    return getattr(getattr(importlib.import_module(module), cls), "n_classes", None)


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
    A resumed run logs the steps between its checkpoint and the kill twice (with the same values,
    the resume being exact); each step is kept once, its last row.
    """
    out: dict[int, float] = {}
    for r in rows:
        v = r.get(name, "")
        if v not in ("", None):
            out[int(float(r.get("step") or 0)) + 1] = float(v)
    return sorted(out.items())


def loss_curve(rows: list[dict[str, str]], points: int = 40) -> list[list[float]]:
    """The training loss as about ``points`` window means, each ``[last step, mean loss]``: the
    shape of a run (Pathfinder's plateau at ln 2, say) in a few hundred bytes of the store."""
    loss = [(s, v) for s, v in _column(rows, "train/loss") if math.isfinite(v)]
    if not loss:
        return []
    width = max(1, math.ceil(loss[-1][0] / points))  # steps per window
    windows: dict[int, list[tuple[int, float]]] = {}
    for step, v in loss:
        windows.setdefault((step - 1) // width, []).append((step, v))
    return [[w[-1][0], round(sum(v for _, v in w) / len(w), 4)]
            for _, w in sorted(windows.items())]


def fill_loss_curves(runs: list[dict[str, Any]]) -> int:
    """Give the records made before loss curves were stored (no ``loss_curve`` key) the curve of
    their run folder where it is on this machine; returns how many were filled."""
    n = 0
    for r in runs:
        if "loss_curve" in r or not r.get("run_dir"):
            continue
        rows = _read_metrics(REPO / r["run_dir"] / "fit" / "metrics.csv")
        if rows:
            r["loss_curve"] = loss_curve(rows)
            n += 1
    return n


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
    # a folder that holds a checkpoint is a killed run's (unfinished_run): it goes on from there,
    # exactly, its time cap counting the time before the kill (Lightning's Timer is in it)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = ["--ckpt_path", str(last)] if last.is_file() else []
    if resume:
        state = torch.load(last, map_location="cpu", weights_only=True)
        info["resumed_from_step"] = int(state["global_step"])
        # the sittings before the kill, by Lightning's Timer (it counts the validations in
        # fit); a run without a time cap has none, and its fit_s is this sitting's alone
        timer = state.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {})
        if "train" in timer:
            info["fit_s_before"] = round(float(timer["train"]), 1)
    t0 = time.time()
    # a grid cell trains its full budget and is tested below, on the checkpoint it names
    lra(["fit", "--config", str(run_dir / "fit.yaml"), "--test_after_fit", "false",
         "--early_stopping.stopping_threshold", "null", *resume])
    # every sitting's: the time before the kill plus this sitting's
    info["fit_s"] = round(info.get("fit_s_before", 0.0) + time.time() - t0, 1)
    ckpts = run_dir / "checkpoints"
    best = sorted(ckpts.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = ckpts / "last.ckpt"
    if not best and not last.is_file():
        raise RuntimeError(f"fit wrote no checkpoint to {ckpts} (did validation ever run?)")
    ckpt = best[-1] if best else last
    info["ckpt"] = str(ckpt)
    # A sitting killed during its test left test/ behind (config.yaml, perhaps a partial
    # metrics.csv); `lra test` would then write into test/test/, where the parent does not look.
    # The test of a fixed checkpoint is repeatable, so the old folder is dropped, not kept.
    shutil.rmtree(run_dir / "test", ignore_errors=True)
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


PROGRESS_EVERY_S = 300.0  # how often a run in flight prints where its training stands


def training_progress(run_dir: Path, max_steps: int | None) -> str | None:
    """``step 1200 of 2000, train loss 2.21 (mean of the last 5 logged)``, from the run's
    metrics file as Lightning has flushed it so far; None before its first rows."""
    rows = _read_metrics(run_dir / "fit" / "metrics.csv")
    step = _steps_done(rows)
    if step is None:
        return None
    loss = [v for _, v in _column(rows, "train/loss")][-5:]
    return (f"step {step}" + (f" of {max_steps}" if max_steps else "")
            + (f", train loss {sum(loss) / len(loss):.3g} (mean of the last {len(loss)} "
               f"logged)" if loss else ""))


def _launch(run_dir: Path, timeout: float, threads: int | None = None,
            on_progress: Callable[[], None] | None = None,
            every: float = PROGRESS_EVERY_S) -> tuple[int | None, str, float]:
    """Run the worker in its own process group; kill the whole group on timeout. Every
    ``every`` seconds while it runs, ``on_progress()`` (a line saying where the run stands)."""
    log = run_dir / "worker.log"
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(LRA_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
    with open(log, "a", encoding="utf-8") as out:  # a resumed run's sittings, one after another
        proc = subprocess.Popen([*WORKER, str(run_dir)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(REPO), env=env, start_new_session=True)
        rc = wait_child(proc, t0 + timeout, every=every, tick=on_progress,
                        kill=lambda: os.killpg(proc.pid, signal.SIGKILL))
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


def with_lr_seed(overrides: dict[str, Any], lr: float | None, seed: int | None
                 ) -> dict[str, Any]:
    """``overrides`` with the sweep's learning rate and Lightning's seed set (None: unchanged)."""
    out = copy.deepcopy(overrides)
    if lr is not None:
        out.setdefault("model", {})["lr"] = float(lr)
    if seed is not None:
        out["seed_everything"] = int(seed)
    return out


def config_fingerprint(cfg: dict[str, Any]) -> str:
    """A short hash of everything in a run's config that changes the run, except the learning
    rate and the seed (keyed on their own) and the run's own folders (loggers, checkpoints).
    Two runs with the same fingerprint, rate and seed are the same experiment."""
    import hashlib

    c = copy.deepcopy(cfg)
    c.get("trainer", {}).pop("logger", None)
    c.pop("checkpoint", None)
    c.get("model", {}).pop("lr", None)
    c.pop("seed_everything", None)
    init = c.get("data", {}).get("init_args", {})
    if init.get("data_dir"):  # the same data from another checkout is the same data
        init["data_dir"] = repo_relative(init["data_dir"])
    return hashlib.sha1(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:12]


def unfinished_run(parent: Path, mixer: str, task: str, cfg: dict[str, Any]) -> Path | None:
    """The folder, under ``parent``, of a run of the experiment ``cfg`` describes (same config
    fingerprint, rate and seed) that was stopped after a checkpoint and before its test ended (a
    grid killed mid-run, a timeout): the newest one, or None. :func:`worker` resumes it."""
    want = (config_fingerprint(cfg), cfg.get("model", {}).get("lr"),
            cfg.get("seed_everything", 0))
    found = []
    for folder in parent.glob(f"{mixer}-{task}-*"):
        last = folder / "checkpoints" / "last.ckpt"
        if (folder / "worker.json").exists() or not last.is_file():
            continue
        try:
            old = yaml.safe_load((folder / "fit.yaml").read_text(encoding="utf-8"))
            key = (config_fingerprint(old), old.get("model", {}).get("lr"),
                   old.get("seed_everything", 0))
        except (OSError, yaml.YAMLError, AttributeError):  # not a run folder of this grid
            continue
        if key == want:
            found.append((last.stat().st_mtime, str(folder)))
    return Path(max(found)[1]) if found else None


def cut_short(rec: dict[str, Any]) -> str | None:
    """``"31 of 60 steps: time cap"`` when a finished run stopped before its max_steps while a
    time cap was set, else None."""
    want, done = rec.get("max_steps"), rec.get("steps")
    if rec.get("max_time") and want and want > 0 and done is not None and done < want:
        return f"{done} of {want} steps: time cap"
    return None


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
            recipe: str | None = None, lr: float | None = None,
            seed: int | None = None) -> dict[str, Any]:
    """Train and test one mixer on one task; always returns a record (status ok or error).
    ``lr`` and ``seed`` (the sweep's) override the config's rate and Lightning's seed."""
    extra = dict(extra or {})
    overrides = with_lr_seed(overrides, lr, seed)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = (runs_dir / setting).resolve()

    def config_in(folder: Path) -> dict[str, Any]:
        return run_config(task, mixer, quick=quick, data_dir=str(data_dir), max_steps=max_steps,
                          budget_minutes=budget_minutes, run_dir=folder, overrides=overrides,
                          config_dir=config_dir, recipe=recipe)

    # a run of the same experiment that was killed after a checkpoint goes on in its folder
    try:
        resume_dir = unfinished_run(parent, mixer, task, config_in(parent / "-"))
    except Exception:  # a broken config is reported below, as this run's error
        resume_dir = None
    run_dir = resume_dir or _reserve_dir(parent, f"{mixer}-{task}-{stamp}")
    cfg = None
    try:
        cfg = config_in(run_dir)
        rec = _record_base(mixer, task, setting, cfg, extra)
        rec.update(seed=cfg.get("seed_everything", 0), config=config_fingerprint(cfg))
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
        if resume_dir is None:
            run_dir.rmdir()
        return rec
    (run_dir / "fit.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    test_cfg = copy.deepcopy(cfg)
    # the test's metrics start afresh at every sitting
    test_cfg["trainer"]["logger"][0].update(class_path="lightning.pytorch.loggers.CSVLogger")
    test_cfg["trainer"]["logger"][0]["init_args"]["version"] = "test"
    (run_dir / "test.yaml").write_text(yaml.safe_dump(test_cfg, sort_keys=False))
    rel = repo_relative(run_dir)
    rec["run_dir"] = rel
    rec["command"] = (f"lra fit --config {rel}/fit.yaml && lra test --config "
                      f"{rel}/test.yaml --ckpt_path <best checkpoint>")
    print(f"[leaderboard] {mixer} x {task} ({setting}): training in {run_dir}", flush=True)
    t_start, max_steps = time.time(), cfg.get("trainer", {}).get("max_steps")

    def progress() -> None:
        where = training_progress(run_dir, max_steps)
        print(f"[leaderboard] {mixer} x {task}: {where or 'starting'} after "
              f"{(time.time() - t_start) / 60:.0f} min", flush=True)

    rc, log, wall = _launch(run_dir, timeout, threads, on_progress=progress)
    rec["wall_s"] = round(wall, 1)
    info = {}
    if (run_dir / "worker.json").is_file():
        info = json.loads((run_dir / "worker.json").read_text())
    rec.update({k: info.get(k) for k in ("fit_s", "test_s")})
    if info.get("resumed_from_step") is not None:
        rec["resumed_from_step"] = info["resumed_from_step"]
    fit_rows = _read_metrics(run_dir / "fit" / "metrics.csv")
    rec["steps"] = _steps_done(fit_rows)
    val = _column(fit_rows, "val/acc")
    test = _column(_read_metrics(run_dir / "test" / "metrics.csv"), "test/acc")
    if val:
        step, acc = max(val, key=lambda sv: (sv[1], -sv[0]))
        rec.update(best_val=acc, best_val_step=step, val_curve=val)
    rec["loss_curve"] = loss_curve(fit_rows)
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
    note = cut_short(rec)
    if note:
        rec["cut_short"] = note
    msg = (rec["error"] or f"test {rec['test']:.4f}, best val {rec['best_val']}") + \
        (f"; {note}" if note else "")
    print(f"[leaderboard] {mixer} x {task}: {msg} ({wall:.0f} s)", flush=True)
    return rec


def lra_key(r: dict[str, Any]) -> tuple:
    """The store key of an LRA run: every option that changes it (the config's fingerprint, the
    learning rate, the seed) and the setting it is filed under."""
    return (r["mixer"], r["task"], r["setting"], r.get("config"), r.get("lr"), r.get("seed"))


def lra_cell(r: dict[str, Any]) -> tuple:
    return (r["mixer"], r["task"], r["setting"], r.get("config"))


def lra_score(r: dict[str, Any]) -> float | None:
    """The sweep selects on validation accuracy; the page reports the test accuracy."""
    return r.get("best_val")


def run_grid(mixers: Sequence[str], tasks: Sequence[str], *, setting: str, quick: bool,
             data_dir: Path, max_steps: int | None, budget_minutes: float | None,
             runs_dir: Path, store: Path, overrides: dict[str, Any] | None = None,
             timeout: float = QUICK_TIMEOUT_S, config_dir: Path = REPO / "configs",
             command: str | None = None, note: str | None = None,
             threads: int | None = None, recipe: str | None = None,
             protocol: Any = None, lrs: Sequence[float] | None = None,
             data_spec: dict[str, list[str]] | None = None,
             run_fn: Any = None, jobs: int = 1,
             resume: bool = False) -> list[dict[str, Any]]:
    """Run every mixer x task; each finished record is added to the store at once.

    With a ``protocol`` (lra/leaderboard/sweep.py) every cell sweeps learning rates (``lrs``,
    else its mixer family's), extends the sweep at an end and re-runs the best rate on the other
    seeds; runs the store already holds are skipped, so a grid fills over several invocations.
    Without one, each cell is one run at its config's rate (the --quick smoke grid).
    ``run_fn`` (default :func:`run_one`) is the one-run function; tests pass a stub.
    ``jobs`` runs train at once (each in its own process, with ``threads`` torch threads).
    ``resume`` makes a grid without a protocol skip the runs the store holds finished too (a
    named setting's ``--no-sweep`` probe; the ``--quick`` smoke grid always reruns).
    """
    from lra.leaderboard import sweep
    from lra.leaderboard.store import load_store

    run_fn = run_fn or run_one
    data: dict[str, str] = {}
    for task in tasks:
        spec = (data_spec or {}).get(task) or (QUICK_DATA.get(task) if quick else None)
        if spec is not None and task in GENERATED:
            try:
                data[task] = ensure_generated(task, data_dir, spec)
            except Exception as err:  # the runs report the missing data
                data[task] = f"generation failed: {type(err).__name__}: {err}"
        else:
            data[task] = f"files in {repo_relative(data_dir)}"
    extra = {"device": device_name(), "grid_command": command,  # the commit: at each launch
             "note": note, "threads": threads or _threads(), "recipe": recipe}
    overrides = overrides or {}

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        return run_fn(spec["mixer"], spec["task"], setting=setting, quick=quick,
                      data_dir=data_dir, max_steps=max_steps, budget_minutes=budget_minutes,
                      runs_dir=runs_dir, overrides=overrides, timeout=timeout,
                      config_dir=config_dir, threads=threads,
                      # the commit at launch: each run's process imports the code anew,
                      # so a grid that spans commits records what each run trained with
                      extra={**extra, "data": data[spec["task"]],
                             "extension": spec.get("extension"), "commit": git_commit(),
                             "dirty": git_dirty()},
                      recipe=recipe, lr=spec.get("lr"), seed=spec.get("seed"))

    def launch(todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for _, rec in sweep.each_finished(one, todo, jobs):
            out.append(rec)
            add_runs(store, [rec])  # from this thread alone, as each run ends
        return out

    def config_of(task: str, mixer: str) -> dict[str, Any] | None:
        try:
            return run_config(task, mixer, quick=quick, data_dir=str(data_dir),
                              max_steps=max_steps, budget_minutes=budget_minutes,
                              run_dir=Path("RUN"), overrides=overrides,
                              config_dir=config_dir, recipe=recipe)
        except Exception:  # run_one reports it as the cell's error
            return None

    if protocol is None:
        todo = [{"mixer": m, "task": t} for t in tasks for m in mixers]
        if resume:  # skip the runs (same config, rate and seed) the store holds finished
            done = {lra_key(r) for r in load_store(store) if sweep.finished(r)}
            keep = []
            for spec in todo:
                cfg = config_of(spec["task"], spec["mixer"])
                # the key run_one's record will have: the config's own rate and seed
                key = None if cfg is None else lra_key(
                    {**spec, "setting": setting, "config": config_fingerprint(cfg),
                     "lr": cfg["model"].get("lr"), "seed": cfg.get("seed_everything", 0)})
                if key in done:
                    print(f"[leaderboard] {spec['mixer']} x {spec['task']} ({setting}): "
                          f"finished in {store}, skipped", flush=True)
                else:
                    keep.append(spec)
            todo = keep
        return launch(todo)
    base = []
    for task in tasks:
        for mixer in mixers:
            cfg = config_of(task, mixer)
            fp = None if cfg is None else config_fingerprint(cfg)
            for lr in (lrs or sweep.rates_for(mixer)):
                base.append({"mixer": mixer, "task": task, "setting": setting, "config": fp,
                             "lr": float(lr), "seed": protocol.seeds[0]})
    return sweep.drive(base, one, lambda: load_store(store), cell_of=lra_cell,
                       key_of=lra_key, score=lra_score, protocol=protocol, jobs=jobs,
                       on_result=lambda spec, rec: add_runs(store, [rec]))


def _threads() -> int:
    import torch

    return torch.get_num_threads()

