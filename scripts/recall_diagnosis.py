"""Why a mixer stays low in a recall-arena cell: the cell's run, varied one setting at a time.

    python scripts/recall_diagnosis.py gdn --cell 64:4:64 --lr 3e-3 --vary vocab=64,256
    python scripts/recall_diagnosis.py gdn --cell 64:4:64 --lr 3e-3 --vary steps=2000,6000
    python scripts/recall_diagnosis.py fox --cell 128:8:64 --lr 1e-3 --vary mixer.forget_bias=0,3
    python scripts/recall_diagnosis.py gdn mamba --cell 64:4:64 --vary steps=6000
    python scripts/recall_diagnosis.py gdn --render        # only rewrite the page

Each run is the arena's run of that cell (``lra/leaderboard/arena.py``: same model, data,
recipe and test) with the settings of ``--vary`` changed; several ``--vary`` options give their
product. What can be varied:

- ``steps``, ``vocab``, ``n_train``, ``batch``: the cell's own fields (``n_train`` defaults to
  the arena's rule, min(20000, steps × batch));
- ``mlp_ratio`` (and any other ``lrm.ModelConfig`` field): the model around the mixer;
- ``mixer.NAME``: a mixer option (``lrm.build``'s keyword arguments, e.g. ``mixer.head_dim``).

Every run goes into a run store (default ``docs/recall_diagnosis_runs.json``; a rerun skips
what it holds), and the page (default ``docs/recall_diagnosis.md``) shows, per mixer and cell,
every variant with its accuracy, its loss curve and whether the loss was still falling at the
end. The text between the page's notes markers (the written diagnosis) survives a re-render.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lra.leaderboard import arena
from lra.leaderboard.render import NOTES_BEGIN, NOTES_END, read_notes
from lra.leaderboard.store import load_store
from lra.leaderboard.sweep import still_improving

CELL_FIELDS = ("steps", "vocab", "n_train", "batch")
SHOWN = ("lr", "steps", "vocab", "n_train", "seed")  # the columns every row shows


def parse_value(text: str) -> Any:
    """``64`` -> 64, ``3e-3`` -> 0.003, ``true`` -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_vary(items: list[str]) -> list[tuple[str, list[Any]]]:
    """``["vocab=64,256", "mixer.head_dim=8,16"]`` -> [("vocab", [64, 256]), ...]."""
    out = []
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise SystemExit(f"--vary takes NAME=V1,V2,...; got {item!r}")
        out.append((name, [parse_value(v) for v in values.split(",")]))
    return out


def base_cell(mixer: str, cell: str, lr: float, seed: int) -> dict[str, Any]:
    """The arena's run of ``cell`` (``L:pairs:d`` or ``passkey``) for ``mixer`` at ``lr``."""
    cells = arena.select_cells(arena.grid(arena.FULL, [mixer]), [cell])
    c = dict(cells[0])
    c.update(lr=lr, seed=seed)
    return c


def variant(base: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The base run with ``settings`` applied (cell fields, ``mixer.*`` options, model fields)."""
    c = json.loads(json.dumps(base))  # a deep copy
    mixer_kw, model_kw = dict(c.get("mixer_kwargs") or {}), dict(c.get("model_kwargs") or {})
    for name, value in settings.items():
        if name in CELL_FIELDS:
            c[name] = value
        elif name.startswith("mixer."):
            mixer_kw[name.removeprefix("mixer.")] = value
        else:
            import lrm

            if name not in lrm.ModelConfig.__dataclass_fields__:
                raise SystemExit(f"--vary: {name!r} is not a cell field ({', '.join(CELL_FIELDS)}"
                                 f"), a mixer option (mixer.NAME) or an lrm.ModelConfig field")
            model_kw[name] = value
    if "n_train" not in settings:  # the arena's rule for the run's steps and batch
        c["n_train"] = arena.n_train_for(c["steps"], c["batch"])
    c["mixer_kwargs"] = mixer_kw
    if model_kw:
        c["model_kwargs"] = model_kw
    return c


def _settings_text(r: dict[str, Any]) -> str:
    extra = [f"mixer.{k}={v}" for k, v in sorted((r.get("mixer_kwargs") or {}).items())]
    extra += [f"{k}={v}" for k, v in sorted((r.get("model_kwargs") or {}).items())]
    return ", ".join(extra) or "arena defaults"


def _curve_text(curve: list[list[float]]) -> str:
    if not curve:
        return "–"
    n = len(curve)
    picks = sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})
    return ", ".join(f"{int(curve[i][0])}: {curve[i][1]:.2f}" for i in picks)


def _quarters_text(by_pos: list[float | None] | None) -> str:
    if not by_pos:
        return "–"
    return " / ".join("–" if a is None else f"{100 * a:.0f}" for a in by_pos)


def _seconds(r: dict[str, Any]) -> float:
    """A run's training time over all its sittings (``fit_s``; a resumed run's ``wall_s`` is
    only its last sitting's), else its wall time for records older than ``fit_s``."""
    return float(r.get("fit_s") or r["wall_s"])


def render(recs: list[dict[str, Any]], *, command: str, notes: str | None) -> str:
    ok = [r for r in recs if r.get("status") == "ok"]
    lines = ["# Recall arena: diagnoses", "",
             "Generated by `python scripts/recall_diagnosis.py` from the run store "
             "`docs/recall_diagnosis_runs.json`. Each row is the arena's run of a cell "
             "(lra/leaderboard/arena.py: 2-layer LM, batch 32, AdamW with warmup and cosine "
             "decay, accuracy on the query positions of 256 fresh test sequences) with the "
             "settings shown changed. \"still learning\": the training loss still fell over the "
             "last fifth of the steps (the arena's rule, lra/leaderboard/arena.py). By "
             "quarter: the accuracy on the queries in each quarter "
             "of the sequence (first to last; – where a quarter holds no query, or the run "
             "predates the column). Loss curve: (step: mean training loss) at the start, "
             "a quarter, half, three quarters and the end. Training (s): the seconds of "
             "training, every sitting of a resumed run added up (the wall time of a run "
             "before that was recorded).", ""]
    lines += [NOTES_BEGIN + (notes if notes is not None else "\n") + NOTES_END, ""]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault((r["mixer"], r["task"], r["L"], r["kv"], r["d"]), []).append(r)
    for (mixer, task, L, kv, d), rs in sorted(groups.items()):
        what = f"MQAR L={L}, {kv} pairs" if task == "mqar" else f"{task} L={L}"
        lines += [f"## {mixer}: {what}, d={d}", "",
                  "| lr | steps | vocab | n_train | seed | other settings | acc (%) | "
                  "by quarter (%) | still learning | loss curve | training (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        rs.sort(key=lambda r: (_settings_text(r), *(r[k] for k in SHOWN)))
        for r in rs:
            learning = ("yes" if still_improving(r.get("loss_curve") or [],
                                                 floor=arena.LEARNING_FLOOR) else "no")
            if arena.diverged(r) is not None:
                acc, learning = "diverged", "–"
            else:
                acc = f"{100 * r['acc']:.1f}"
            lines.append(f"| {r['lr']:g} | {r['steps']} | {r['vocab']} | {r['n_train']} | "
                         f"{r['seed']} | {_settings_text(r)} | {acc} | "
                         f"{_quarters_text(r.get('acc_by_position'))} | {learning} | "
                         f"{_curve_text(r.get('loss_curve') or [])} | {_seconds(r):.0f} |")
        lines.append("")
    failed = [r for r in recs if r.get("status") != "ok"]
    if failed:
        lines += ["## Runs that failed", ""]
        lines += [f"- {r['mixer']} {_settings_text(r)} lr={r['lr']:g}: {r.get('error')}"
                  for r in failed]
        lines.append("")
    lines.append(f"Last command: `{command}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    # the docstring's layout kept in the epilog, and every option's default shown
    fmt = type("Fmt", (argparse.ArgumentDefaultsHelpFormatter,
                       argparse.RawDescriptionHelpFormatter), {})
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=fmt,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("mixers", nargs="+", help="registry names (each gets every variant)")
    ap.add_argument("--cell", default="64:4:64",
                    help="the arena cell, L:pairs:d or passkey")
    ap.add_argument("--lr", type=float, nargs="+", default=[3e-3],
                    help="learning rates (each with every variant)")
    ap.add_argument("--vary", nargs="+", default=[], metavar="NAME=V1,V2",
                    help="settings to vary (their product); none: the arena's run itself")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    ap.add_argument("--store", type=Path, default=Path("docs/recall_diagnosis_runs.json"),
                    help="the run store (resumed: runs already in it are skipped)")
    ap.add_argument("--out", type=Path, default=Path("docs/recall_diagnosis.md"),
                    help="the page")
    ap.add_argument("--render", action="store_true", help="only rewrite the page")
    args = ap.parse_args(argv)
    import lrm

    for mixer in args.mixers:
        lrm.registry.canonical(mixer)  # an unknown name fails here, with the valid names
    command = "python scripts/recall_diagnosis.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    if not args.render:
        vary = parse_vary(args.vary)
        names = [n for n, _ in vary]
        runs = []
        for mixer, lr, seed in itertools.product(args.mixers, args.lr, args.seeds):
            base = base_cell(mixer, args.cell, lr, seed)
            for values in itertools.product(*(v for _, v in vary)):
                runs.append(variant(base, dict(zip(names, values, strict=True))))
        arena.run(runs, args.store, jobs=args.jobs, command=command)
    recs = load_store(args.store)
    if args.render:  # the page names the command that made its newest run, not this one
        dated = [r for r in recs if r.get("grid_command") and r.get("date")]
        command = max(dated, key=lambda r: r["date"])["grid_command"] if dated else command
    page = render(recs, command=command, notes=read_notes(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
