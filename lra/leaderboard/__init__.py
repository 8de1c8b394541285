"""``lra leaderboard``: train a grid of mixers x LRA tasks and write the leaderboard.

    lra leaderboard --quick                                  every mixer, generated tasks, CPU-sized
    lra leaderboard --setting cpu                            every mixer, ListOps, swept
    lra leaderboard --setting pathfinder-easy-bn --mixers s4d s4   the CPU Pathfinder row, swept
    lra leaderboard --setting listops-lra                    ListOps at the release's lengths, swept
    lra leaderboard --mixers attention s4 --tasks listops text --data-dir data/lra_release
    lra leaderboard --recipe s4 --tasks listops --no-sweep   S4's own recipe, its own rate
    lra leaderboard --render --publish --merge runs/x.json   add another store, rewrite docs/
    lra leaderboard --suite recall [--quick]                 the recall arena (docs/recall.md)

Each run of the grid is ``lra fit`` then ``lra test`` on the best checkpoint, both in one child
process (``python -m lra.leaderboard --worker RUN_DIR``) started for that run alone, so a mixer
that crashes, runs out of memory or hangs (killed after ``--timeout`` seconds) becomes an
``error`` cell and the grid goes on. The run folder ``<runs-dir>/<setting>/<mixer>-<task>-<time>/``
keeps the exact configs (``fit.yaml``, ``test.yaml``: ``lra fit --config fit.yaml`` reruns it),
the CSV metrics and the checkpoints. While a run trains, every 5 minutes the grid prints its
step and recent training loss (read from that folder's metrics file).

The sweep protocol (lra/leaderboard/sweep.py, shared with the recall arena): every cell sweeps
its mixer family's learning rates (``--lrs`` to choose), chosen on validation accuracy; a best
rate at an end of the sweep extends it by one rate (recorded on the run); the best rate is
re-run on a second seed; a diverged run is never a result. ``--quick`` and ``--no-sweep`` run
one run per cell at the config's rate.

Results go to a JSON store, one record per run, keyed by every option that changes the run (a
fingerprint of its config, the learning rate and the seed): a rerun of the same command skips
finished runs, so a grid fills over several invocations. By default the store and the page are
``runs/leaderboard/leaderboard_runs.json`` and ``runs/leaderboard/leaderboard.md``; the
published ``docs/leaderboard.md`` and its store are written only with ``--publish`` (never with
``--quick``). The page: the published numbers (with their sources), the protocol and the rate
table, the settings and the commands that fill them, one table per setting with the test
accuracy at each cell's best rate (both seeds and their mean) beside the majority class of the
same test set, the run details (steps, wall time, device per row, a time-cap note when a run
stopped short) and the plot. Text between ``<!-- notes -->`` and ``<!-- /notes -->`` is kept.

Settings. ``--quick`` (setting ``quick``) uses ``configs/lra/quick/<task>.yaml``: a 2-layer,
d=64 bidirectional model, 100 steps and at most 1.5 minutes of training per run, on small sets
generated into ``--data-dir`` (default ``data/lra_quick``) with ``lra generate`` when missing
(sizes in :data:`QUICK_DATA`), one torch thread per run (``--threads``). A quick run is thus
bounded: 1.5 minutes of training, then the test, and a kill after 4 minutes of wall time.
``--setting cpu`` and ``--setting listops-lra`` are named settings (:data:`SETTINGS` in
runner.py: tasks, data, the same model for every mixer, steps, time cap) with the sweep.

Without ``--quick`` or a named setting (setting ``full``) a run uses the LRA recipe of
``configs/lra/<task>.yaml`` and the real data in ``--data-dir`` (default ``data/lra_release``).
``--recipe s4`` layers a mixer's own recipe, ``configs/lra/s4/<task>.yaml``, over the task
config (its mixer becomes the default of ``--mixers``).
``--setting NAME`` files runs under another name; ``--set key=value`` overrides any config
entry (``--set model.model.d_model=128``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from lra.leaderboard.render import (  # noqa: F401  (re-exported)
    NOTES_BEGIN,
    NOTES_END,
    PUBLISHED,
    read_notes,
    render_markdown,
    write_outputs,
)
from lra.leaderboard.runner import (  # noqa: F401  (re-exported)
    QUICK_BUDGET_MINUTES,
    QUICK_DATA,
    QUICK_TIMEOUT_S,
    SETTINGS,
    _reserve_dir,
    deep_merge,
    parse_set,
    recipe_config,
    run_config,
    run_grid,
    run_one,
    worker,
)
from lra.leaderboard.store import (  # noqa: F401  (re-exported)
    GENERATED,
    REPO,
    STORE_SCHEMA,
    TASK_ORDER,
    add_output_args,
    add_runs,
    latest,
    load_store,
    merge_stores,
    output_paths,
    portable_command,
    save_store,
)
from lra.leaderboard.sweep import PROTOCOL


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
    ap.add_argument("--suite", choices=("lra", "recall"), default="lra",
                    help="lra: the LRA grid (default); recall: the recall arena, see "
                         "`lra leaderboard --suite recall --help`")
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
    ap.add_argument("--lrs", nargs="+", type=float, default=None,
                    help="the learning rates each cell sweeps first (default: its mixer "
                         "family's, lra/leaderboard/sweep.py); not with --quick, whose runs "
                         "take the config's one rate")
    ap.add_argument("--no-sweep", action="store_true",
                    help="one run per cell at the config's rate (a recipe's reproduction), "
                         "without the learning-rate sweep")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once, each its own process with --threads torch threads "
                         "(default 1; a 2-core box: --jobs 2 with one thread each)")
    add_output_args(ap, "lra")
    ap.add_argument("--plot", default=None, help="default: <out stem>.png; 'none' for no plot")
    ap.add_argument("--runs-dir", default="runs/leaderboard")
    ap.add_argument("--config-dir", default=str(REPO / "configs"))
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        from lra.allocator import keep_freed_memory

        keep_freed_memory()  # a worker is its own process (see lra/allocator.py)
        return worker(argv[1])
    if "--suite" in argv:
        i = argv.index("--suite")
        suite = argv[i + 1] if i + 1 < len(argv) else ""
        rest = argv[:i] + argv[i + 2:]
        if suite == "recall":
            from lra.leaderboard.arena import main as arena

            return arena(rest)
        if suite != "lra":
            raise SystemExit(f"--suite must be 'lra' (the default) or 'recall', got {suite!r}")
        argv = rest
    args = build_parser().parse_args(argv)
    out, store = output_paths(args, "lra")
    plot_path = None if args.plot == "none" else (
        Path(args.plot) if args.plot else out.with_suffix(".png"))
    if not args.render:
        quick = args.quick
        if args.recipe and args.quick:
            raise SystemExit("--recipe layers a full recipe; it does not combine with --quick")
        mixers = args.mixers or ([_recipe_mixer(args.recipe, Path(args.config_dir))]
                                 if args.recipe else _mixer_names())
        preset = {} if quick else SETTINGS.get(args.setting or "", {})
        tasks = args.tasks or preset.get("tasks") or (
            list(GENERATED) if quick else list(TASK_ORDER))
        data_dir = Path(args.data_dir or preset.get("data_dir")
                        or ("data/lra_quick" if quick else "data/lra_release"))
        budget = args.budget_minutes if args.budget_minutes is not None else (
            QUICK_BUDGET_MINUTES if quick else preset.get("budget_minutes"))
        timeout = args.timeout or (QUICK_TIMEOUT_S if quick and args.budget_minutes is None
                                   else (2 * 60 * budget + 300 if budget else 10 ** 9))
        if args.jobs < 1:
            raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
        overrides = deep_merge(preset.get("overrides", {}), parse_set(args.overrides))
        run_grid(mixers, tasks, setting=args.setting or ("quick" if quick else "full"),
                 # a preset trains the quick configs' model at its own size and data
                 quick=quick or bool(preset), data_dir=data_dir.resolve(),
                 max_steps=args.max_steps or preset.get("max_steps"),
                 budget_minutes=budget, runs_dir=Path(args.runs_dir), store=store,
                 overrides=overrides, timeout=timeout,
                 config_dir=Path(args.config_dir), note=args.note,
                 command=portable_command("lra leaderboard " + shlex.join(argv)),
                 threads=(1 if quick or preset else 0) if args.threads is None
                 else args.threads,
                 recipe=args.recipe, protocol=None if quick or args.no_sweep else PROTOCOL,
                 lrs=args.lrs,
                 data_spec=preset.get("data"), jobs=args.jobs, resume=bool(preset))
    merge_stores(store, args.merge)
    write_outputs(store, out, plot_path)
    return None


if __name__ == "__main__":
    main()
