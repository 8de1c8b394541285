"""The ``lra`` command: a table of subcommands, each imported only when it runs.

    lra fit      [--config task.yaml --config model.yaml ...]   train (LightningCLI)
    lra pretrain [--config task.yaml --config model.yaml ...]   self-pretrain on the task's inputs
    lra validate / lra test --config ... --ckpt_path PATH          evaluate a checkpoint
    lra generate listops|pathfinder --out DIR                       make LRA data locally
    lra leaderboard [--quick]                                       run the grid, write docs/
    lra list                                                        configs, mixers, tasks

With no config, ``lra fit`` trains the built-in default: a 2-layer attention model (d=64) on
MQAR (L=128, 16 key-value pairs), on CPU, in a few minutes. Several ``--config`` files compose
left to right (task config, then model config), and any key can be overridden on the command
line (``--model.model.mixer gdn``, ``--trainer.max_steps 500``). Multi-GPU and multi-node come
from Lightning's own strategies: ``--trainer.devices 4 --trainer.strategy ddp`` (or fsdp).

Resume a killed run exactly with ``--ckpt_path runs/<name>/checkpoints/last.ckpt``.

This module imports neither torch nor Lightning: ``lra --help`` answers at once, and the
Lightning parts (:mod:`lra.lightning_cli`) load only for the subcommands that need them.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import NamedTuple


class Subcommand(NamedTuple):
    summary: str  # one line for `lra --help`
    target: str  # "module:function", called with the remaining arguments


_TRAINER = "lra.lightning_cli:run"

# Every subcommand, in the order `lra --help` lists them. A new one is one line here.
SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand("train a model; no config trains attention on MQAR (the README's main job)",
                      _TRAINER),
    "validate": Subcommand("evaluate a checkpoint on the validation split", _TRAINER),
    "test": Subcommand("evaluate a checkpoint on the test split", _TRAINER),
    "predict": Subcommand("LightningCLI's predict (no shipped task has a predict split yet)",
                          _TRAINER),
    "pretrain": Subcommand("self-pretrain the encoder on the task's own training inputs "
                           "(then `lra fit --model.init_from`)", "lra.pretrain:main"),
    "generate": Subcommand("make LRA data locally: listops, pathfinder (no download)",
                           "lra.data.generate:main"),
    "list": Subcommand("list the shipped config files, the mixers and the tasks",
                       "lra.catalog:main"),
    "leaderboard": Subcommand("train and test every mixer on every task, write docs/ "
                              "(`--suite recall`: the recall arena)",
                              "lra.leaderboard:main"),
}


def help_text() -> str:
    width = max(map(len, SUBCOMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items())
    return (
        "usage: lra <subcommand> [options]\n\n"
        "Train and evaluate lrm models on Long Range Arena and synthetic recall.\n\n"
        f"subcommands:\n{rows}\n\n"
        "`lra <subcommand> --help` lists a subcommand's options, `lra list` the config "
        "files and mixers. Examples:\n"
        "  lra fit                                                 # the main job, on CPU\n"
        "  lra fit --config configs/recall/mqar.yaml --config configs/model/gdn.yaml\n"
        "  lra fit --config runs/lra/version_0/config.yaml "
        "--ckpt_path runs/lra/version_0/checkpoints/last.ckpt\n"
        "  lra test --config runs/lra/version_0/config.yaml --ckpt_path <checkpoint>\n"
    )


# The first screen of `lra fit --help`: how to choose, and the options most runs touch. Every
# option and default here is checked against the full parser by tests/lra/test_daytoday.py.
COMMON_OPTIONS = (
    ("--config FILE", "a config file; repeat it (task, then model; later ones win)"),
    ("--model.model.mixer NAME", "the mixer (default: attention)"),
    ("--model.model.d_model N", "width (default: 64)"),
    ("--model.model.n_layers N", "blocks (default: 2)"),
    ("--model.lr LR", "peak learning rate (default: 0.003)"),
    ("--trainer.max_steps N", "step limit (default: 3000)"),
    ("--trainer.accelerator A", "cpu, gpu, auto, ... (default: auto)"),
    ("--early_stopping.stopping_threshold X",
     "stop once val/acc >= X (default: 0.99; null: never)"),
    ("--test_after_fit BOOL", "test the best checkpoint after fit (default: true)"),
    ("--ckpt_path PATH", "fit: resume from it; validate/test: evaluate it"),
    ("--print_config", "print the whole resolved config and exit"),
)


def trainer_help(subcommand: str) -> str:
    """``lra fit --help``: how to pick a task, a model and the common options, then what exists.
    The full option dump is one flag away (``--help-all``)."""
    from lra.catalog import listing

    width = max(len(flag) for flag, _ in COMMON_OPTIONS)
    rows = "\n".join(f"  {flag:<{width}}  {what}" for flag, what in COMMON_OPTIONS)
    return (
        f"usage: lra {subcommand} [--config TASK.yaml] [--config MODEL.yaml] [--KEY VALUE ...]\n\n"
        "Choose a task and a model with config files (task first, then model), then override "
        "any key.\nWith no config, the task is MQAR (L=128) and the model 2 attention blocks "
        "of width 64.\n"
        "  lra fit --config configs/recall/mqar.yaml --config configs/model/gdn.yaml\n"
        "  lra fit --config configs/lra/listops.yaml --model.model.mixer mamba "
        "--trainer.max_steps 500\n\n"
        f"common options:\n{rows}\n\n{listing()}\n\n"
        f"`lra {subcommand} --help-all` lists every option (about 800 lines).")


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    from_shell = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return None
    name = argv[0]
    if name not in SUBCOMMANDS:
        from lrm.names import unknown

        sys.stderr.write("lra: " + unknown(
            "subcommand", name, SUBCOMMANDS, show_match=lambda s: f"`lra {s}`",
            listing=f"Valid: {', '.join(SUBCOMMANDS)} (`lra --help` says what each does).") + "\n")
        raise SystemExit(2)
    if SUBCOMMANDS[name].target == _TRAINER:
        if "-h" in argv or "--help" in argv:
            print(trainer_help(name))
            return None
        argv = ["--help" if a == "--help-all" else a for a in argv]
    from lra.allocator import keep_freed_memory

    keep_freed_memory()  # large freed tensors stay mapped: see lra/allocator.py
    module, function = SUBCOMMANDS[name].target.split(":")
    run = getattr(importlib.import_module(module), function)
    if SUBCOMMANDS[name].target == _TRAINER:
        return run(argv, from_shell=from_shell, started=started)
    return run(argv[1:])


if __name__ == "__main__":
    main()
