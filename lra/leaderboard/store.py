"""The leaderboards' run store: one JSON file of run records, appended to and never pruned.

A record is a plain dict (mixer, task, setting, date, status, metrics, model size, the command
and the provenance: commit, whether the tree was dirty, device). Writes are atomic and re-read
the file first, so a killed grid loses at most the run in flight, and grids that share a store
never drop each other's records. Paths inside the repository are stored relative to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STORE_SCHEMA = 1
TASK_ORDER = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
TASK_NAMES = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
              "pathfinder": "Pathfinder", "pathx": "Path-X"}
GENERATED = ("listops", "pathfinder")  # the LRA tasks `lra generate` can make

def load_store(path: str | Path) -> list[dict[str, Any]]:
    """All run records in the store (oldest first); an absent file is an empty store."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"the run store {p} is not valid JSON ({e}); restore it (from git, "
                         f"where it is committed) or move it aside to start an empty "
                         f"store") from e
    if isinstance(data, list):  # tolerate a bare list
        return data
    return list(data.get("runs", []))


def merge_runs(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """``old`` then ``new``: nothing is dropped (an identical record is not added twice)."""
    out = list(old)
    seen = {json.dumps(r, sort_keys=True, default=str) for r in out}
    for r in new:
        s = json.dumps(r, sort_keys=True, default=str)
        if s not in seen:
            out.append(r)
            seen.add(s)
    return out


def save_store(path: str | Path, runs: list[dict[str, Any]]) -> None:
    """Write the store atomically (a killed write never leaves half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"schema": STORE_SCHEMA, "runs": runs}, indent=1, default=str)
                   + "\n", encoding="utf-8")
    tmp.replace(p)


def checkpoint_file(key: str, root: Path, env: str, *, stem: str = "") -> Path:
    """Where the run with store key ``key`` keeps its checkpoint while it trains
    (``lra.quick.fit``): under ``root``, or the folder in the environment variable ``env``,
    named ``stem`` + a hash of the key."""
    folder = Path(os.environ.get(env) or root)
    return folder / f"{stem}{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"


def add_runs(path: str | Path, new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge ``new`` into the store at ``path`` (re-read just before writing) and return it."""
    runs = merge_runs(load_store(path), new)
    save_store(path, runs)
    return runs


def run_key(r: dict[str, Any]) -> tuple[str, str, str, bool]:
    # a self-pretrained run (model.init_from) is a row of its own beside the scratch run
    return (r["mixer"], r["task"], r["setting"], bool(r.get("pretrained")))


def row_label(r: dict[str, Any]) -> str:
    """The mixer, marked ``+ SPT`` when the run was fine-tuned from ``lra pretrain``."""
    return r["mixer"] + (" + SPT" if r.get("pretrained") else "")


def latest(runs: Iterable[dict[str, Any]]
           ) -> dict[tuple[str, str, str, bool], dict[str, Any]]:
    """The newest record of every mixer x task x setting x pretrained (by ``date``; later in
    the list wins a tie)."""
    best: dict[tuple[str, str, str, bool], dict[str, Any]] = {}
    for r in runs:
        k = run_key(r)
        if k not in best or str(r.get("date", "")) >= str(best[k].get("date", "")):
            best[k] = r
    return best



# ============================================================================ provenance
def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (so that a store written on
    one machine reads the same on another), else as given."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def portable_command(command: str) -> str:
    """A command line as a store keeps it: every absolute path in it relative to the repository
    when it lies inside, else ``OUT_DIR/<name>`` (an output folder of one machine means nothing
    on another, and committed text names no machine's folders)."""
    def one(arg: str) -> str:
        opt, eq, val = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if not val.startswith("/"):
            return arg
        p = Path(val)
        rel = repo_relative(p)
        return opt + eq + (rel if not Path(rel).is_absolute() else f"OUT_DIR/{p.name}")
    return shlex.join(one(a) for a in shlex.split(command))


def device_name(kind: str | None = None) -> str:
    """The machine a run trains on, in words; ``kind`` "cpu" names the CPU even where a GPU is
    present (a run's own device, which every record carries)."""
    import torch

    if kind != "cpu" and torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty(ignore: tuple[str, ...] = ("docs/",)) -> bool | None:
    """True when the working tree has uncommitted changes to tracked files outside ``ignore``
    (the record then does not match its commit exactly); None outside a git checkout. The
    results under ``docs/`` are ignored: a sweep writes its own store there as it runs."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                              "--untracked-files=no"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    paths = [line[3:] for line in out.stdout.splitlines() if line.strip()]
    return any(not p.startswith(ignore) for p in paths)


# ======================================================================= where results go
# Both suites write to a working folder under runs/ by default; the published pages and stores
# under docs/ are rewritten only with --publish (and never by a --quick smoke run).
OUTPUTS = {"lra": ("runs/leaderboard/leaderboard.md", "docs/leaderboard.md"),
           "recall": ("runs/recall/recall.md", "docs/recall.md")}


def add_output_args(ap: Any, suite: str) -> None:
    """The options both suites share: where the page and the store are, publishing, merging."""
    work, pub = OUTPUTS[suite]
    ap.add_argument("--out", default=None,
                    help=f"the page (default {work}; with --publish {pub})")
    ap.add_argument("--store", default=None, help="the run store (default: <out stem>_runs.json)")
    ap.add_argument("--publish", action="store_true",
                    help=f"write the published page and store ({pub}); without it nothing under "
                         f"docs/ is written")
    ap.add_argument("--merge", nargs="+", default=[], metavar="STORE",
                    help="add the records of these stores (e.g. a GPU sweep's) to the store "
                         "before the page is written")
    ap.add_argument("--render", action="store_true", help="only rewrite the page from the store")


def output_paths(args: Any, suite: str) -> tuple[Path, Path]:
    """(page, store) from the parsed options; refuses to write under docs/ without --publish,
    and refuses --publish for a --quick smoke run."""
    work, pub = OUTPUTS[suite]
    if getattr(args, "quick", False) and args.publish:
        raise SystemExit("--quick is a smoke run: its results never go to the published pages. "
                         "Drop --publish (results go to " + work + ").")
    out = Path(args.out or (pub if args.publish else work))
    store = Path(args.store) if args.store else out.with_name(out.stem + "_runs.json")
    docs = (REPO / "docs").resolve()
    for p in (out, store):
        if not args.publish and p.resolve().is_relative_to(docs):
            raise SystemExit(f"{p} is under docs/, where the published pages and stores live; "
                             f"they are rewritten only with --publish (a --quick run never "
                             f"publishes). Write elsewhere (default {work}) or add --publish.")
    return out, store


def merge_stores(store: Path, others: Iterable[str | Path]) -> None:
    """Add every record of ``others`` to ``store`` (nothing is dropped or duplicated)."""
    for other in others:
        recs = load_store(other)
        for r in recs:
            if r.get("grid_command"):
                r["grid_command"] = portable_command(r["grid_command"])
        if not recs:
            raise SystemExit(f"--merge: no records in {other}")
        add_runs(store, recs)
        print(f"[leaderboard] merged {len(recs)} records of {other} into {store}", flush=True)
