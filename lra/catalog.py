"""What can be chosen: the shipped config files, the mixers and the tasks, in one place.

``lra list`` prints it; ``lra fit --help`` shows it on its first screen; and every error that
rejects a name (a config file, a mixer, a task) suggests from these lists, so that a typo gets
the same one-paragraph answer wherever it was made. This module imports neither torch nor
Lightning (the mixer names are read from :mod:`lrm.registry` only when asked for).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The repository's configs/ folder (beside lra/); a run from elsewhere still finds it.
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"

# Every task's data module: the class name, its full import path and what it serves.
TASKS: dict[str, tuple[str, str]] = {
    "RecallDataModule": ("lra.data.recall.RecallDataModule",
                         "MQAR, selective copying, induction heads, passkey"),
    "ListOpsDataModule": ("lra.data.ListOpsDataModule", "LRA ListOps"),
    "IMDBDataModule": ("lra.data.IMDBDataModule", "LRA Text (IMDB bytes)"),
    "AANDataModule": ("lra.data.AANDataModule", "LRA Retrieval (AAN, two towers)"),
    "CIFAR10DataModule": ("lra.data.CIFAR10DataModule", "LRA Image (CIFAR-10 gray)"),
    "PathfinderDataModule": ("lra.data.PathfinderDataModule", "LRA Pathfinder and Path-X"),
}


def config_files(root: Path = CONFIG_ROOT) -> list[str]:
    """Every shipped config, as ``configs/<group>/<name>.yaml``, sorted."""
    if not root.is_dir():
        return []
    return sorted(str(Path("configs") / p.relative_to(root)) for p in root.rglob("*.yaml"))


def mixer_names() -> list[str]:
    from lrm.registry import available

    return available()


def closest_config(given: str, n: int = 2) -> list[str]:
    """The shipped configs nearest to ``given`` (compared by path, then by file name)."""
    import difflib

    files = config_files()
    rel = given.replace(os.sep, "/")
    if "configs/" in rel:
        rel = "configs/" + rel.split("configs/", 1)[1]
    near = difflib.get_close_matches(rel, files, n=n, cutoff=0.6)
    if not near:  # a right name in a wrong folder: match on the name alone
        by_name: dict[str, list[str]] = {}
        for f in files:
            by_name.setdefault(Path(f).name, []).append(f)
        for name in difflib.get_close_matches(Path(rel).name, list(by_name), n=n, cutoff=0.6):
            near += by_name[name]
    return near[:n]


def listing(width: int = 100) -> str:
    """The text of ``lra list``: config files by folder, mixers, task classes."""
    groups: dict[str, list[str]] = {}
    for f in config_files():
        folder, name = str(Path(f).parent), Path(f).name
        groups.setdefault(folder, []).append(name)
    lines = ["config files (--config FILE; a task, then a model):"]
    for folder, names in groups.items():
        for_pretrain = " (for lra pretrain)" if folder.startswith("configs/pretrain") else ""
        lines += _wrapped(f"  {folder}/{for_pretrain}: ", names, width)
    lines += _wrapped("mixers (--model.model.mixer NAME): ", mixer_names(), width)
    lines.append("tasks (--data CLASS, or a task config above):")
    lines += [f"  {path:<34} {what}" for path, what in TASKS.values()]
    return "\n".join(lines)


def _wrapped(head: str, words: list[str], width: int) -> list[str]:
    lines, line = [], head
    for i, w in enumerate(words):
        piece = w + ("," if i < len(words) - 1 else "")
        if len(line) + len(piece) + 1 > width and line.strip() != head.strip():
            lines.append(line.rstrip())
            line = " " * 4
        line += piece + " "
    lines.append(line.rstrip())
    return lines


def main(argv: list[str]) -> None:
    """``lra list``: the config files, mixers and tasks there are."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: lra list\n\nLists the shipped config files, the mixers and the task "
              "classes that `lra fit` accepts.")
        return
    if argv:
        sys.stderr.write(f"lra list: takes no arguments, got {' '.join(argv)}\n")
        raise SystemExit(2)
    print(listing())
