"""Claim check (Never Train from Scratch, Amos, Berant & Gupta, ICLR 2024): self-pretraining on
the task's own inputs, at an equal total step budget, beats training from scratch on LRA, and
makes tasks learnable where scratch training stays at chance.

    python scripts/claims/spt.py --pf-steps 120 --pf-pretrain 60 --lo-steps 200 \
        --lo-pretrain 100 --jobs 3               # recorded in docs/claims/spt.md
    python scripts/claims/spt.py --smoke         # a few steps per run, to check the plumbing

For each task x mixer two chains of the real harness, each command a child process with one
torch thread (``--jobs`` chains at a time):

- scratch: ``lra fit`` for N steps, then ``lra test`` on its last checkpoint;
- SPT: ``lra pretrain`` for P steps (masked denoising, half the tokens masked, constant
  learning rate after warmup: configs/pretrain/quick/<task>.yaml), then ``lra fit
  --model.init_from <pretrain last.ckpt>`` for N - P steps, then ``lra test`` on its last
  checkpoint.

Tasks (generated into ``--data-dir`` with ``lra generate`` when missing, sizes below):
Pathfinder-32 at contour length 6 (s4d, attention) and ListOps with short expressions
(attention, s4d, gdn). Models: the quick configs (configs/lra/quick/<task>.yaml: bidirectional,
2 layers, layer norm, lr 3e-3) at d_model 32, composed with configs/model/<mixer>.yaml.
Writes the markdown page (``--out``), keeping the text between ``<!-- notes -->`` and
``<!-- /notes -->`` of an existing page.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

NOTES_BEGIN, NOTES_END = "<!-- notes -->", "<!-- /notes -->"
# (task, generator arguments, extra data arguments, mixers)
TASKS: dict[str, dict[str, Any]] = {
    "pathfinder": {
        "generate": ["--resolution", "32", "--contour-length", "6", "--n-images", "1200",
                     "--per-batch", "600"],
        "data": {"contour_length": 6, "batch_size": 16},
        "mixers": ["s4d", "attention"],
    },
    "listops": {
        "generate": ["--n-train", "3000", "--n-val", "300", "--n-test", "300",
                     "--min-length", "20", "--max-length", "100"],
        "data": {"batch_size": 32, "seq_len": 128},
        "mixers": ["attention", "s4d", "gdn"],
    },
}


def _run(commands: list[list[str]], cwd: Path, log: Path) -> list[float]:
    """Run ``lra`` commands one after the other in one child process (one import of torch and
    Lightning for the chain); returns the wall seconds of each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    times = cwd / "times.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(commands),
           str(times)]
    with open(log, "w", encoding="utf-8") as out:
        for c in commands:
            out.write("$ lra " + shlex.join(c) + "\n")
        out.flush()
        rc = subprocess.call(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"a command of {cwd.name} exited {rc}; see {log}")
    return json.loads(times.read_text())


def worker(commands: list[list[str]], times: Path) -> None:
    import torch

    from lra.cli import main as lra

    torch.set_num_threads(1)
    walls = []
    for c in commands:
        t0 = time.time()
        lra(c)
        walls.append(round(time.time() - t0, 1))
    times.write_text(json.dumps(walls))


def _metrics(path: Path, column: str) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    return [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]


def chain(task: str, mixer: str, spt: bool, *, steps: int, pretrain: int, data_dir: Path,
          out: Path) -> dict[str, Any]:
    """One run: scratch (fit N) or SPT (pretrain P, fit N - P); then test the last weights."""
    spec = TASKS[task]
    cwd = out / f"{task}-{mixer}-{'spt' if spt else 'scratch'}"
    cwd.mkdir(parents=True, exist_ok=True)
    base = ["--config", str(REPO / "configs" / "lra" / "quick" / f"{task}.yaml")]
    common = ["--config", str(REPO / "configs" / "model" / f"{mixer}.yaml"),
              "--data.init_args.data_dir", str(data_dir), "--model.model.d_model", "32"]
    for k, v in spec["data"].items():
        common += [f"--data.init_args.{k}", str(v)]

    def budget(n: int) -> list[str]:
        return ["--trainer.max_steps", str(n), "--trainer.val_check_interval",
                str(max(1, n // 3)), "--trainer.check_val_every_n_epoch", "null",
                "--model.warmup_steps", str(max(1, min(10, n // 10))),
                "--checkpoint.every_n_train_steps", str(n)]

    pre_run, run = cwd / "runs" / "pretrain" / "version_0", cwd / "runs" / "lra" / "version_0"
    commands, names = [], []
    fit_steps, init = steps, []
    if spt:
        pre_cfg = ["--config", str(REPO / "configs" / "pretrain" / "quick" / f"{task}.yaml")]
        commands.append(["pretrain", *base, *pre_cfg, *common, *budget(pretrain)])
        names.append("pretrain")
        init = ["--model.init_from", str(pre_run / "checkpoints" / "last.ckpt")]
        fit_steps = steps - pretrain
    commands.append(["fit", *base, *common, *budget(fit_steps), *init])
    commands.append(["test", "--config", str(run / "config.yaml"), "--ckpt_path",
                     str(run / "checkpoints" / "last.ckpt")])
    names += ["fit", "test"]
    walls = _run(commands, cwd, cwd / "log.txt")
    rec: dict[str, Any] = {"task": task, "mixer": mixer, "spt": spt,
                           "wall_s": dict(zip(names, walls, strict=True)),
                           "fit_steps": fit_steps, "pretrain_steps": pretrain if spt else 0}
    if spt:
        rec["pretrain_val"] = _metrics(pre_run / "metrics.csv", "val/acc")
    rec["val"] = _metrics(run / "metrics.csv", "val/acc")
    test = _metrics(run / "metrics.csv", "test/acc")  # `lra test` logs into the same folder
    rec["test"] = test[-1][1] if test else None
    return rec


def ensure_data(data_dir: Path) -> None:
    from lra.leaderboard import ensure_generated

    for task, spec in TASKS.items():
        ensure_generated(task, data_dir, spec["generate"])


def majority(task: str, data_dir: Path) -> tuple[float, list[int]]:
    """Majority-class accuracy on the test split and the split sizes."""
    import lra.data as D

    cls = {"pathfinder": D.PathfinderDataModule, "listops": D.ListOpsDataModule}[task]
    dm = cls(data_dir=str(data_dir), **TASKS[task]["data"])
    dm.setup("test")
    t = dm.datasets["test"].targets
    return (float(t.bincount().max()) / t.numel(),
            [len(dm.datasets[s]) for s in ("train", "val", "test")])


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _curve(points: list[tuple[int, float]], offset: int = 0) -> str:
    return ", ".join(f"{s + 1 + offset}: {_pct(a)}" for s, a in points) or "–"


def render(recs: list[dict[str, Any]], facts: dict[str, Any], args: argparse.Namespace,
           command: str, wall: float, notes: str) -> str:
    lines = [
        "# Claim check: self-pretraining on the task's own data (Never Train from Scratch)",
        "",
        f"Command: `{command}` — {wall / 60:.1f} min wall on {facts['machine']}, one torch "
        f"thread per run, {args.jobs} runs at a time (the machine was shared with other jobs, so "
        "wall times are inflated and only comparable within this page).",
        "",
        "Equal total step budgets: *scratch* trains N steps on the labels; *SPT* pretrains P "
        "steps on the training inputs (masked denoising, 50% of the tokens masked, "
        "`configs/pretrain/quick/<task>.yaml`), then fine-tunes N − P steps from those "
        "weights (`lra fit --model.init_from`). Test accuracy is that of the last checkpoint.",
        "",
    ]
    for task in TASKS:
        if not any(r["task"] == task for r in recs):
            continue
        maj, sizes = facts[task]
        n = args.pf_steps if task == "pathfinder" else args.lo_steps
        p = args.pf_pretrain if task == "pathfinder" else args.lo_pretrain
        done = [r for r in recs if r["task"] == task and r["spt"] and "fit_steps" in r]
        if done:  # the budgets the records were made with
            n, p = done[0]["fit_steps"] + done[0]["pretrain_steps"], done[0]["pretrain_steps"]
        spec = TASKS[task]
        lines += [
            f"## {'Pathfinder-32, contour length 6' if task == 'pathfinder' else 'ListOps'}",
            "",
            f"Data: `lra generate {task} {' '.join(spec['generate'])}` "
            f"({sizes[0]}/{sizes[1]}/{sizes[2]} train/val/test), batch "
            f"{spec['data']['batch_size']}; N = {n}, P = {p}. Majority class of the test set: "
            f"{_pct(maj)}%.",
            "",
            "| mixer | scratch: test | SPT: test | scratch: best val | SPT: best val "
            "| SPT: pretrain val token acc (last) | wall s scratch / SPT |",
            "|---|---|---|---|---|---|---|",
        ]
        for mixer in spec["mixers"]:
            by = {r["spt"]: r for r in recs if r["task"] == task and r["mixer"] == mixer}
            sc, sp = by.get(False, {}), by.get(True, {})

            def best(r: dict[str, Any]) -> str:
                return _pct(max((a for _, a in r.get("val", [])), default=None))

            pre = sp.get("pretrain_val") or []
            lines.append(
                f"| {mixer} | {_pct(sc.get('test'))} | {_pct(sp.get('test'))} | {best(sc)} | "
                f"{best(sp)} | {_pct(pre[-1][1]) if pre else '–'} | "
                f"{sum(sc.get('wall_s', {}).values()):.0f} / "
                f"{sum(sp.get('wall_s', {}).values()):.0f} |")
        lines += ["", "Learning curves (validation accuracy % at the step counted from the "
                  "start of the whole budget):", ""]
        for mixer in spec["mixers"]:
            for r in recs:
                if r["task"] != task or r["mixer"] != mixer:
                    continue
                if r["spt"]:
                    lines.append(f"- {mixer}, SPT: pretraining token accuracy "
                                 f"{_curve(r.get('pretrain_val', []))}; fine-tuning "
                                 f"{_curve(r.get('val', []), offset=r['pretrain_steps'])}")
                else:
                    lines.append(f"- {mixer}, scratch: {_curve(r.get('val', []))}")
        lines.append("")
    errors = [r for r in recs if r.get("error")]
    if errors:
        lines += ["## Runs that failed", ""]
        lines += [f"- {r['task']} {r['mixer']} {'SPT' if r['spt'] else 'scratch'}: "
                  f"{r['error']}" for r in errors]
        lines.append("")
    lines += [NOTES_BEGIN, notes.strip("\n"), NOTES_END, ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=REPO / "data" / "spt",
                   help="generated task data (made with `lra generate` when missing)")
    p.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "claims-spt",
                   help="where each chain's runs and logs go")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "claims" / "spt.md",
                   help="the markdown page")
    p.add_argument("--pf-steps", type=int, default=120, help="Pathfinder: total steps N")
    p.add_argument("--pf-pretrain", type=int, default=60, help="Pathfinder: pretraining steps P")
    p.add_argument("--lo-steps", type=int, default=200, help="ListOps: total steps N")
    p.add_argument("--lo-pretrain", type=int, default=100, help="ListOps: pretraining steps P")
    p.add_argument("--jobs", type=int, default=3, help="chains run at once")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                   help="tasks to run")
    p.add_argument("--smoke", action="store_true", help="4 steps per run, output to stdout")
    p.add_argument("--records", type=Path, help="only render the page from a records.json "
                   "that an earlier run wrote into its runs folder")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker[0]), Path(args.worker[1]))
    if args.smoke:
        args.pf_steps = args.lo_steps = 4
        args.pf_pretrain = args.lo_pretrain = 2
    command = "python scripts/claims/spt.py " + shlex.join(sys.argv[1:])
    t0 = time.time()
    if args.records:
        saved = json.loads(args.records.read_text())
        return write(args, saved["records"], saved["facts"], saved["command"], saved["wall"])
    ensure_data(args.data_dir)
    import platform

    facts: dict[str, Any] = {t: majority(t, args.data_dir) for t in TASKS}
    facts["machine"] = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.runs_dir / stamp
    jobs = [(t, m, spt) for t in args.tasks for m in TASKS[t]["mixers"] for spt in (False, True)]
    slow = {"gdn": 0, "attention": 1}  # start the slowest chains first
    jobs.sort(key=lambda j: (slow.get(j[1], 2), j[0] != "pathfinder"))

    def one(job: tuple[str, str, bool]) -> dict[str, Any]:
        t, m, spt = job
        n = args.pf_steps if t == "pathfinder" else args.lo_steps
        pre = args.pf_pretrain if t == "pathfinder" else args.lo_pretrain
        try:
            rec = chain(t, m, spt, steps=n, pretrain=pre, data_dir=args.data_dir.resolve(),
                        out=out_dir)
        except Exception as err:  # a failed run is a row that says so
            rec = {"task": t, "mixer": m, "spt": spt, "error": str(err)[:300], "wall_s": {}}
        print(f"[spt] {t} {m} {'SPT' if spt else 'scratch'}: test {rec.get('test')} "
              f"({sum(rec['wall_s'].values()):.0f} s)", flush=True)
        return rec

    with cf.ThreadPoolExecutor(args.jobs) as pool:
        recs = list(pool.map(one, jobs))
    wall = time.time() - t0
    (out_dir / "records.json").write_text(json.dumps(
        {"records": recs, "facts": facts, "command": command, "wall": wall}, indent=1))
    write(args, recs, facts, command, wall)


def write(args: argparse.Namespace, recs: list[dict[str, Any]], facts: dict[str, Any],
          command: str, wall: float) -> None:
    notes = ""
    if args.out.is_file():
        text = args.out.read_text(encoding="utf-8")
        if NOTES_BEGIN in text and NOTES_END in text:
            notes = text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    page = render(recs, facts, args, command, wall, notes)
    if args.smoke:
        print(page)
    else:
        args.out.write_text(page, encoding="utf-8")
        print(f"[spt] wrote {args.out} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
