"""Sample a training run's Lightning metrics as it trains: steps per second, seconds per epoch
and the validation accuracy after each epoch (scripts/device/s4_listops.sh). A validation
taken before the epoch's last step (the time cap's) is marked ``"complete": false``.

    python scripts/device/epoch_clock.py RUNS_DIR OUT.json --steps-per-epoch 3000

Every few seconds it reads the newest ``fit/metrics.csv`` under RUNS_DIR (the CSV logger writes
it as the run goes) and rewrites OUT.json, so the numbers exist however the run ends. It stops
on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import time
from pathlib import Path

PUBLISHED = "15 min per epoch on a T4 (state-spaces/s4, S4 ListOps; reference/lra.md)"


def read(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("runs_dir", help="the run folder the training writes its metrics to")
    ap.add_argument("out", help="the JSON-lines file the samples are appended to")
    ap.add_argument("--steps-per-epoch", type=int, required=True,
                    help="training steps in one epoch (to turn steps into epochs)")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between samples")
    args = ap.parse_args()
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    t0, samples, epochs = time.time(), [], {}
    while True:
        files = sorted(Path(args.runs_dir).glob("**/fit/metrics.csv"),
                       key=lambda p: p.stat().st_mtime)
        rows = read(files[-1]) if files else []
        steps = [int(float(r["step"])) + 1 for r in rows if r.get("step")]
        if steps and (not samples or max(steps) > samples[-1][1]):
            samples.append((round(time.time() - t0, 1), max(steps)))
        for r in rows:
            if r.get("val/acc") and r.get("epoch"):
                e, step = int(float(r["epoch"])), int(float(r["step"])) + 1
                # a run stopped by its time cap validates once more, mid-epoch: say so
                epochs.setdefault(e, {"epoch": e, "step": step, "val_acc": float(r["val/acc"]),
                                      "complete": step >= (e + 1) * args.steps_per_epoch,
                                      "seen_at_s": round(time.time() - t0, 1)})
        rate = None
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        Path(args.out).write_text(json.dumps({
            "steps_per_s": rate and round(rate, 2),
            "s_per_epoch": rate and round(args.steps_per_epoch / rate, 1),
            "steps_per_epoch": args.steps_per_epoch, "published": PUBLISHED,
            "epochs": [epochs[e] for e in sorted(epochs)], "samples": samples[-50:],
        }, indent=1))
        if stop:
            return
        time.sleep(args.every)


if __name__ == "__main__":
    main()
