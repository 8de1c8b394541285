"""The leaderboard page: published numbers, our newest runs per setting, details, the plot."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lra.leaderboard import sweep
from lra.leaderboard.store import (
    REPO,
    TASK_NAMES,
    TASK_ORDER,
    latest,
    load_store,
    row_label,
    save_store,
)

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
    threads = _range(r.get("threads") for r in recs)
    budget = _range(_minutes(r.get("max_time")) for r in recs if r.get("max_time"))
    max_steps = _range(r.get("max_steps") for r in recs)
    batch = _range(r.get("batch_size") for r in recs)
    lr = _range(r.get("lr") for r in recs)
    commits = _range(f"{r['commit']}" + (" + uncommitted changes" if r.get("dirty") else "")
                     for r in recs if r.get("commit"))
    kind = "short CPU run" if all(str(r.get("device", "")).startswith("CPU") for r in recs) \
        else "run"
    return (f"**{setting}** — {kind}: {steps} training steps (max_steps {max_steps}, time cap "
            f"{budget} per run), d={d}, {layers} layers, bidirectional={bi}, batch {batch}, "
            f"lr {lr}; {threads} torch thread(s) per run; each run's device is in its row "
            f"(run details); code: "
            f"commit {commits}.")


def _cell(recs: list[dict[str, Any]]) -> dict[tuple, Any]:
    """{(row label, task): CellSummary} over a setting's records (the sweep protocol's best rate
    on validation accuracy, and every seed there); records made before the protocol are cells
    of one rate and one seed."""
    from lra.leaderboard.runner import lra_cell, lra_key, lra_score

    def cell(r: dict[str, Any]) -> tuple:
        return (row_label(r), *lra_cell(r))

    def key(r: dict[str, Any]) -> tuple:
        return (row_label(r), *lra_key(r))

    out: dict[tuple, Any] = {}
    for c, summ in sweep.summarize(recs, cell_of=cell, key_of=key, score=lra_score).items():
        k = (c[0], c[2])
        # several configs of one row and task in a setting: the newest cell is the row's
        if k not in out or _date(summ) >= _date(out[k]):
            out[k] = summ
    return out


def headline(summ: Any) -> tuple[float | None, list[float]]:
    """A cell's number, as the table and the plot show it: the mean test accuracy over the
    seeds run at the best rate, and each seed's (seed order)."""
    tests = [x["test"] for _, x in sorted(summ.seeds.items()) if x.get("test") is not None]
    return (sum(tests) / len(tests) if tests else None), tests


def _date(summ: Any) -> str:
    recs = list(summ.seeds.values()) or ([summ.best] if summ.best else [])
    return max((str(r.get("date", "")) for r in recs), default="")


def rising_at_end(r: dict[str, Any]) -> bool:
    """True when a run's validation accuracy was highest at its last evaluation and had risen
    there by more than its noise: the step budget, not the model, may have set its score.

    The rise is measured from the last reading at least a tenth of the run's steps earlier (a
    run cut by the time cap is evaluated once more a few steps after a scheduled reading, and
    that pair says nothing about a trend). The noise is two standard errors of the last
    reading, 2 sqrt(p (1 - p) / n) on the run's ``n`` validation examples (``sizes["val"]``):
    1.1 points on 8,000 images at 50%, so a run drifting on the chance plateau is not flagged.
    Without the size, any rise counts."""
    curve = sorted(r.get("val_curve") or [])
    if not curve:
        return False
    last_step, last = curve[-1]
    earlier = [acc for step, acc in curve if step <= 0.9 * last_step]
    if not earlier or last < max(acc for _, acc in curve):
        return False
    n = (r.get("sizes") or {}).get("val")
    noise = 2 * math.sqrt(last * (1 - last) / n) if n else 0.0
    return last - earlier[-1] > noise


def ours_table(recs: list[dict[str, Any]]) -> str:
    """Per mixer and task: test accuracy at the best rate (by validation), the mean over seeds
    with each seed in brackets, ``@`` the rate; the majority class of the test set below."""
    tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in recs)]
    tasks += sorted({r["task"] for r in recs} - set(tasks))
    mixers = sorted({row_label(r) for r in recs})  # "m" and "m + SPT" side by side
    cells_by = _cell(recs)
    newest = {(row_label(r), r["task"]): r for r in latest(recs).values()}
    lines = ["| mixer | " + " | ".join(f"{TASK_NAMES.get(t, t)} test (seeds) @ lr / best val"
                                        for t in tasks) + " |",
             "|" + "---|" * (len(tasks) + 1)]
    for m in mixers:
        cells = []
        for t in tasks:
            summ = cells_by.get((m, t))
            r = newest.get((m, t))
            if summ is not None and summ.best is not None:
                seeds = sorted(summ.seeds.items())
                mean, _ = headline(summ)
                each = " / ".join(_pct(x.get("test")) for _, x in seeds)
                cut = "; ".join(sorted({x["cut_short"] for _, x in seeds if x.get("cut_short")}))
                cells.append(f"{_pct(mean)} ({each}) @ {summ.best.get('lr')} / "
                             f"{_pct(summ.best.get('best_val'))}"
                             + (" (end of sweep)" if summ.capped else "")
                             + (" (still rising)" if any(rising_at_end(x) for _, x in seeds)
                                else "")
                             + (f" ({cut})" if cut else ""))
            elif r is None:
                cells.append("")
            elif r.get("status") != "ok" and sweep.diverged(r) is None:
                cells.append("error: " + str(r.get("error", "?")).split(":")[0][:40])
            else:
                cells.append("diverged")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    maj = []
    for t in tasks:
        vals = {round(r["majority"], 4) for r in recs if r["task"] == t and r.get("majority")}
        maj.append(" / ".join(_pct(v) for v in sorted(vals)) or "–")
    lines.append("| *majority class (test set)* | " + " | ".join(maj) + " |")
    return "\n".join(lines)


def details_table(recs: list[dict[str, Any]]) -> str:
    lines = ["| mixer | task | status | steps | lr | seed | wall s (fit / test) | params "
             "| best val (step) | test | majority | data (train/val/test) | device | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (TASK_ORDER.index(r["task"])
                                         if r["task"] in TASK_ORDER else 99, row_label(r))):
        status = "ok" if r.get("status") == "ok" else \
            ("diverged, " if sweep.diverged(r) is not None else "") + \
            "error: " + str(r.get("error")).replace("|", "\\|").replace("\n", " ")[:300]
        wall = "–" if r.get("wall_s") is None else \
            f"{r['wall_s']:.0f} ({r.get('fit_s') or '–'} / {r.get('test_s') or '–'})"
        if r.get("wall_s") is not None and r.get("resumed_from_step") is not None:
            # a killed run that went on from its checkpoint: its fit time counts every sitting
            # (Lightning's Timer), its wall time and date the last sitting only
            wall += f"; wall and date: the sitting resumed at step {r['resumed_from_step']}"
        sizes = r.get("sizes") or {}
        size = "/".join(str(sizes.get(s, "?")) for s in ("train", "val", "test"))
        best = "–" if r.get("best_val") is None else \
            f"{_pct(r['best_val'])} ({r.get('best_val_step')})"
        steps = str(r.get("steps") or "–") + (f" ({r['cut_short']})" if r.get("cut_short")
                                               else "")
        lr = str(r.get("lr") or "–") + (f" (sweep extended {r['extension']})"
                                        if r.get("extension") else "")
        lines.append(
            f"| {row_label(r)} | {r['task']} | {status} | {steps} | "
            f"{lr} | {r.get('seed', '–')} | {wall} | "
            f"{r.get('params') or '–'} | {best} | {_pct(r.get('test'))} | "
            f"{_pct(r.get('majority'))} | {r.get('data', '')} ({size}) | {r.get('device', '?')} "
            f"| {r.get('date', '')} |")
    return "\n".join(lines)


def settings_section() -> list[str]:
    """The named settings and the commands that fill them (lra/leaderboard/runner.py SETTINGS)."""
    from lra.leaderboard.runner import SETTINGS

    out = ["## Settings and the commands that fill them", "",
           "- `quick`: a smoke run (2 layers, d = 64, 100 steps, one rate): `lra leaderboard "
           "--quick` (never published).",
           "- `full`: the LRA recipe of `configs/lra/<task>.yaml` on the release's data: "
           "`lra leaderboard --data-dir data/lra_release --publish` (`--recipe s4` for S4's "
           "own recipe)."]
    for name, spec in SETTINGS.items():
        cmd = spec.get("command") or f"lra leaderboard --setting {name} --publish --jobs 2"
        out.append(f"- `{name}`: {spec['about']}: `{cmd}` ({_how(cmd)}; resumable: finished "
                   "runs are skipped, and a run killed mid-way goes on from its last checkpoint "
                   "in its own folder).")
    return [*out, ""]


def _how(cmd: str) -> str:
    """How a setting's command shares the CPU, in words, from its --jobs and --threads (the
    leaderboard's defaults for a setting: one run at a time, one torch thread)."""
    words = cmd.split()

    def opt(name: str) -> int:
        return int(words[words.index(name) + 1]) if name in words else 1

    jobs, threads = opt("--jobs"), opt("--threads")
    num = {1: "one", 2: "two"}
    runs = f"{num.get(jobs, jobs)} run{'s' if jobs > 1 else ''} at a time"
    each = f"{num.get(threads, threads)} thread{'s' if threads > 1 else ''}"
    return f"{runs}, {each} each" if jobs > 1 else f"{runs} with {each}"


def render_markdown(runs: list[dict[str, Any]], notes: str | None = None,
                    plot_name: str | None = "leaderboard.png", store_name: str = "",
                    curves_name: str | None = None) -> str:
    """The whole leaderboard page from the store's records."""
    from lra.leaderboard.runner import lra_key

    newest = list(sweep.newest_by(runs, lambda r: (row_label(r), *lra_key(r))).values())
    settings = sorted({r["setting"] for r in newest})
    out = ["# LRA leaderboard", "",
           "Generated by `lra leaderboard --publish` (lra/leaderboard/) from the run store"
           + (f" `{store_name}`" if store_name else "")
           + "; never edited by hand. Accuracy in %. **Our numbers are short runs with tiny "
           "models and small generated data sets unless the setting says otherwise: they show "
           "that a mixer trains on the task, not its LRA accuracy.** They are not comparable to "
           "the published rows, which are full LRA training runs.", "",
           "## Published results (test accuracy, %)", "",
           "Full LRA runs as published; FAIL = chance; avg over six tasks counts FAIL as 50.",
           "", published_table(), "",
           "## Protocol", "",
           "Every cell of a setting other than `quick`: " + sweep.PROTOCOL.describe()
           + ". The best rate is chosen on validation accuracy; a cell shows the test accuracy "
           "there (mean over seeds, each seed in brackets), `@` the rate, then the best "
           "validation accuracy; \"(still rising)\": a seed's validation accuracy was highest "
           "at its last evaluation and had risen there, since the reading a tenth of its steps "
           "or more before, by more than two standard errors (2 sqrt(p(1-p)/n) on the "
           "validation split), so more steps might have raised it; the last row is the majority "
           "class of the test set.", "",
           sweep.rates_table(), ""]
    out += settings_section()
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
        cut = sorted(f"{r['mixer']} x {r['task']} lr {r.get('lr')} seed {r.get('seed')}: "
                     f"{r['cut_short']}" for r in recs if r.get("cut_short"))
        if cut:
            out += ["Cut short by the time cap: " + "; ".join(cut) + ".", ""]
        out += [ours_table(recs), "", "<details><summary>run details</summary>", "",
                details_table(recs), "", "</details>", ""]
    if plot_name:
        out += [f"![leaderboard]({plot_name})", ""]
    if curves_name:
        out += ["Learning curves of each mixer's best-rate seed-0 run, for the runs that stored "
                "them (training loss as window means; dotted: the loss of a uniform guess):", "",
                f"![learning curves]({curves_name})", ""]
    out += [NOTES_BEGIN, notes.strip() if notes else "", NOTES_END, ""]
    return "\n".join(out)


def read_notes(path: Path) -> str | None:
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return None


def plot_rows(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task, our bars: one per setting and mixer with the number its table shows (the
    mean over seeds at the best rate; :func:`headline`), each seed's accuracy and the test set's
    majority class; settings in the page's order, mixers sorted within a setting."""
    ok = [r for r in runs if r.get("status") == "ok" and r.get("test") is not None]
    out: dict[str, list[dict[str, Any]]] = {}
    for s in sorted({r["setting"] for r in ok}):
        recs = [r for r in ok if r["setting"] == s]
        for (label, task), summ in sorted(_cell(recs).items()):
            mean, tests = headline(summ)
            if mean is None:
                continue
            maj = next((r["majority"] for r in recs
                        if r["task"] == task and r.get("majority")), None)
            out.setdefault(task, []).append({
                "label": f"{label} [{s}]", "setting": s, "acc": 100 * mean,
                "seeds": [100 * t for t in tests], "lr": summ.best.get("lr"),
                "majority": None if maj is None else 100 * maj})
    return out


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy per task: published models (grey) beside our cells per setting (the
    tables' numbers: the mean over seeds at the best rate, each seed a dot), with the
    majority-class baseline of our test sets as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = plot_rows(runs)
    tasks = [t for t in TASK_ORDER if t in rows] or list(TASK_ORDER)
    settings = sorted({b["setting"] for bars in rows.values() for b in bars})
    n_bars = len(PUBLISHED) + max([len(rows.get(t, [])) for t in tasks] or [0])
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
        bars = rows.get(t, [])
        for b in bars:
            labels.append(b["label"])
            values.append(b["acc"])
            cols.append(colours[settings.index(b["setting"]) % len(colours)])
        y = list(range(len(values)))
        ax.barh(y, values, color=cols)
        right = values[:len(PUBLISHED)] + [max(b["acc"], *b["seeds"]) for b in bars]
        for yi, v, x in zip(y, values, right, strict=True):  # the label right of any dot
            ax.text(x + 1, yi, f"{v:.1f}", va="center", fontsize=7)
        for yi, b in enumerate(bars, start=len(PUBLISHED)):
            if len(b["seeds"]) > 1:  # each seed, so a mean of two distant seeds shows as such
                ax.plot(b["seeds"], [yi] * len(b["seeds"]), "k.", ms=4)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        maj = [b["majority"] for b in bars if b["majority"] is not None]
        for m in sorted(set(round(v, 1) for v in maj)):
            ax.axvline(m, ls="--", color="k", lw=1)
        if maj:
            ax.text(min(maj), len(values) - 0.4, " majority class (our test set)", fontsize=7,
                    va="bottom")
        ax.set_xlim(0, 100)
        ax.set_title(TASK_NAMES.get(t, t))
        ax.set_xlabel("test accuracy (%)")
    fig.suptitle("LRA: published (grey, full training) vs lrm (colour: setting; bar: the "
                 "table's mean over seeds at the best rate; dots: each seed)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_runs(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (setting, task), one run per mixer to draw: the seed-0 run at the rate the table
    shows (the sweep protocol's best), where that run stored a loss curve."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in sorted({r["setting"] for r in runs}):
        cells = _cell([r for r in runs if r["setting"] == s])
        for (_, t), summ in sorted(cells.items()):
            r = summ.seeds.get(0) or summ.best
            if r is not None and r.get("status") == "ok" and r.get("loss_curve"):
                out.setdefault((s, t), []).append(r)
    return out


def curves_plot(runs: list[dict[str, Any]], path: Path) -> bool:
    """Training loss and validation accuracy against steps, one line per mixer, one row per
    (setting, task) whose runs stored their loss curve; False (nothing drawn) if none did."""
    from lra.leaderboard.runner import task_classes

    groups = curve_runs(runs)
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixers = sorted({row_label(r) for rs in groups.values() for r in rs})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {m: colours[i % len(colours)] for i, m in enumerate(mixers)}
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.2 * len(groups)), squeeze=False)
    for (ax_l, ax_a), ((s, t), rs) in zip(axes, groups.items(), strict=True):
        for r in rs:
            lab = row_label(r) + (f" (lr {r['lr']:g})" if r.get("lr") else "")
            steps, loss = zip(*r["loss_curve"], strict=True)
            ax_l.plot(steps, loss, color=colour[row_label(r)], label=lab, lw=1.2)
            if r.get("val_curve"):
                vs, va = zip(*r["val_curve"], strict=True)
                ax_a.plot(vs, [100 * a for a in va], "o-", color=colour[row_label(r)], ms=3,
                          label=lab, lw=1.2)
        k = task_classes(t)
        if k:  # the loss of a uniform guess over the classes
            ax_l.axhline(math.log(k), ls=":", color="k", lw=1)
            ax_l.text(ax_l.get_xlim()[0], math.log(k), f" ln {k}", fontsize=7, va="bottom")
        maj = sorted({round(100 * r["majority"], 1) for r in rs if r.get("majority")})
        for m in maj:
            ax_a.axhline(m, ls="--", color="k", lw=1)
        if maj:
            ax_a.text(ax_a.get_xlim()[0], maj[0], " majority class (test set)", fontsize=7,
                      va="bottom")
        name = TASK_NAMES.get(t, t)
        ax_l.set(title=f"{name}, setting {s}: training loss (window means)", xlabel="step")
        ax_a.set(title=f"{name}, setting {s}: validation accuracy (%)", xlabel="step")
        ax_a.legend(fontsize=7, ncol=2)
        for ax in (ax_l, ax_a):
            ax.title.set_fontsize(9)
    fig.suptitle("lrm runs: each mixer's best-rate seed-0 run", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def curves_path(plot_path: Path) -> Path:
    return plot_path.with_name(plot_path.stem + "_curves" + plot_path.suffix)


def write_outputs(store: Path, out: Path, plot_path: Path | None) -> None:
    from lra.leaderboard.runner import fill_loss_curves

    runs = load_store(store)
    if fill_loss_curves(runs):  # older records whose run folders are here
        save_store(store, runs)
    rel_plot = rel_curves = None
    if plot_path is not None:
        plot(runs, plot_path)
        rel_plot = os.path.relpath(plot_path, out.parent)
        curves = curves_path(plot_path)
        if curves_plot(runs, curves):
            rel_curves = os.path.relpath(curves, out.parent)
    store_name = str(store.resolve().relative_to(REPO)) if store.resolve().is_relative_to(REPO) \
        else str(store)
    text = render_markdown(runs, read_notes(out), rel_plot, store_name, rel_curves)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"[leaderboard] wrote {out}" + (f" and {plot_path}" if plot_path else ""), flush=True)
