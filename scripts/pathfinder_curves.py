"""The Pathfinder question in one figure: the learning curves of the CPU Pathfinder runs of the
leaderboard (every run of the named settings in the run store) and of the CNN control
(``scripts/pathfinder_control.py`` results), against the number of training images seen, so
that runs of different batch sizes share one axis.

    python scripts/pathfinder_curves.py            # writes docs/pathfinder_curves.png

Left: training loss (the runs' window means) with ln 2, the loss of a constant guess on
balanced labels; right: validation accuracy with 50%. Dashed: ``pathfinder-probe``, whose
images carry LRA's distractor paths; solid: the settings without distractors; thick black and
grey: the CNN control (dash-dotted: without BatchNorm); thicker coloured lines: mixers with
BatchNorm (``pathfinder-easy-bn``) and the 90-minute LayerNorm run (``pathfinder-long``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("pathfinder-probe", "pathfinder-easy", "pathfinder-easy-bn", "pathfinder-long")


def leaderboard_curves(store: Path, settings: tuple[str, ...]) -> list[dict[str, Any]]:
    """``{label, images, loss: [(images, loss)], val: [(images, acc)]}`` per stored run."""
    runs = json.loads(store.read_text())["runs"]
    out = []
    for r in runs:
        if r.get("task") != "pathfinder" or r.get("setting") not in settings:
            continue
        if r.get("status") != "ok" or not r.get("loss_curve"):
            continue
        b = int(r["batch_size"])
        seed = r.get("seed")  # two seeds of one cell must not share a legend entry
        out.append({"label": f"{r['mixer']} ({r['setting']}, lr {r['lr']:g}"
                             f"{'' if seed is None else f', seed {seed}'})",
                    # the probe's images have LRA's distractor paths, the others have none
                    "style": "--" if r["setting"] == "pathfinder-probe" else "-",
                    "width": 1.8 if r["setting"].endswith(("-bn", "-long")) else 1.0,
                    "loss": [(s * b, v) for s, v in r["loss_curve"]],
                    "val": [(s * b, v) for s, v in r.get("val_curve") or []]})
    return out


def control_curves(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        r = json.loads(p.read_text())
        b = int(r["batch"])
        norm = r.get("norm", True)
        out.append({"label": f"CNN control{'' if norm else ' without BatchNorm'}, seed "
                             f"{r['seed']} ({r['setting']} data)",
                    "style": "-" if norm else "-.",
                    "color": "black" if r["seed"] == 0 else "dimgray",
                    "loss": [(c["step"] * b, c["train_loss"]) for c in r["curve"]],
                    "val": [(c["step"] * b, c["val_acc"]) for c in r["curve"]]})
    return out


def plot(curves: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(17, 5.2))
    # more runs than the default cycle's 10 colours: tab20's 20 (past 20 runs colours repeat)
    ax_l.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for c in curves:
        width = c.get("width", 2.2)  # the control (and the BatchNorm runs) stand out
        xs, ys = zip(*c["loss"], strict=True)
        (line,) = ax_l.plot([x / 1000 for x in xs], ys, c["style"], lw=width,
                            color=c.get("color"), label=c["label"])
        if c["val"]:
            xs, ys = zip(*c["val"], strict=True)
            ax_v.plot([x / 1000 for x in xs], [100 * y for y in ys], c["style"], marker="o",
                      ms=3, lw=width, color=line.get_color(), label=c["label"])
    ax_l.axhline(math.log(2), ls=":", color="k")
    ax_l.text(0, math.log(2), "ln 2", va="bottom", fontsize=8)
    ax_v.axhline(50, ls=":", color="k")
    ax_l.set(xlabel="training images seen (thousands)", ylabel="training loss (window means)",
             title="Pathfinder-32, contour length 6: training loss", ylim=(0.0, 0.78))
    ax_v.set(xlabel="training images seen (thousands)", ylabel="validation accuracy (%)",
             title="validation accuracy")
    # beside the panels: with two dozen runs a legend inside covers the curves
    fig.legend(*ax_v.get_legend_handles_labels(), fontsize=7, loc="center right",
               frameon=False)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--store", default="docs/leaderboard_runs.json",
                    help="the leaderboard's run store")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS),
                    help="the settings whose Pathfinder runs are drawn")
    ap.add_argument("--controls", nargs="*", default=None,
                    help="pathfinder_control.py JSON results (default: "
                         "docs/pathfinder_control/*.json)")
    ap.add_argument("--out", default="docs/pathfinder_curves.png", help="the figure")
    args = ap.parse_args(argv)
    controls = ([Path(p) for p in args.controls] if args.controls is not None
                else sorted((REPO / "docs" / "pathfinder_control").glob("*.json")))
    curves = leaderboard_curves(Path(args.store), tuple(args.settings)) + control_curves(controls)
    if not curves:
        raise SystemExit(f"no Pathfinder curves in {args.store} for settings {args.settings} "
                         f"and no control results")
    plot(curves, Path(args.out))
    print(f"wrote {args.out} ({len(curves)} curves)")
    return Path(args.out)


if __name__ == "__main__":
    main()
