"""Seconds per training step of a named LRA leaderboard setting's model, per mixer: what a grid
of that setting would cost on this machine, before running it.

    python scripts/lra_step_time.py --setting listops-lra
    python scripts/lra_step_time.py --setting pathfinder-easy-bn --mixers s4d attention

The model is the one ``lra leaderboard --setting NAME`` trains (the task's quick config with
the setting's overrides, through ``lra.leaderboard.runner.run_config``, and the data module's
model hints), on one random batch of the setting's full sequence length (a batch of a
variable-length task pads to its longest member, which in a batch of 32 is close to the
maximum). A step is the forward pass, cross-entropy, backward and an AdamW step over
``lrm.optim.param_groups``, as in ``lra fit`` less the data loading and the logging. The table
gives the median over ``--repeats`` steps after one untimed step, the time 2,000 steps would
take, and the steps that fit in the setting's time cap.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import measure  # noqa: E402

import lrm  # noqa: E402
from lra.leaderboard.runner import SETTINGS, data_module, run_config  # noqa: E402
from lrm.optim import param_groups  # noqa: E402


def build(setting: str, task: str, mixer: str) -> tuple[torch.nn.Module, dict, int]:
    """The setting's model for ``mixer``, its training options and its sequence length."""
    spec = SETTINGS[setting]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = run_config(task, mixer, quick=True, data_dir=spec["data_dir"],
                         max_steps=spec["max_steps"], budget_minutes=spec["budget_minutes"],
                         run_dir=Path(tmp), overrides=spec.get("overrides", {}),
                         config_dir=REPO / "configs")
    data = data_module(cfg["data"])
    model = lrm.LRModel(lrm.ModelConfig(**{**cfg["model"]["model"], **data.model_hints()}))
    return model, cfg["model"], int(data.seq_len)


def step_seconds(model: torch.nn.Module, opts: dict, seq_len: int, batch: int,
                 repeats: int) -> float:
    vocab, classes = model.cfg.vocab_size, model.cfg.n_classes
    x = torch.randint(1, vocab, (batch, seq_len))
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.AdamW(param_groups(model, lr=float(opts.get("lr", 1e-3)),
                                         weight_decay=float(opts.get("weight_decay", 0.0))))
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return measure.time_calls(step, repeats=repeats, warmup=1)["median_s"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--setting", default="listops-lra", choices=sorted(SETTINGS),
                   help="a named setting of lra leaderboard (lra/leaderboard/runner.py)")
    p.add_argument("--task", default=None, help="default: the setting's first task")
    p.add_argument("--mixers", nargs="+", default=None, help="default: every registered mixer")
    p.add_argument("--batch", type=int, default=32, help="sequences per step (the settings': 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per mixer")
    p.add_argument("--threads", type=int, default=1, help="torch threads, as the grid uses")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = SETTINGS[args.setting]
    task = args.task or spec["tasks"][0]
    if task not in spec["tasks"]:
        p.error(f"setting {args.setting!r} runs the tasks {spec['tasks']}, not {task!r}")
    mixers = args.mixers or sorted(lrm.registry.available())
    cap_s = 60 * spec["budget_minutes"]
    print(f"setting {args.setting}, task {task}, batch {args.batch}, {args.threads} thread(s), "
          f"median of {args.repeats} steps after one untimed step\n")
    print("| mixer | s / step | 2,000 steps | steps in the "
          f"{spec['budget_minutes']:g}-minute cap |\n|---|---|---|---|", flush=True)
    for mixer in mixers:
        torch.manual_seed(0)
        model, opts, L = build(args.setting, task, mixer)
        s = step_seconds(model, opts, L, args.batch, args.repeats)
        fit = min(spec["max_steps"], int(cap_s / s))
        print(f"| {mixer} | {s:.2f} | {2000 * s / 60:.0f} min | {fit:,} |", flush=True)


if __name__ == "__main__":
    main()
