"""What the claim checks share: the command line (help with defaults, threads, seed, an output
file), a seeded LM-head model, the MQAR train/test split, the timed quick-train call, and the
report, printed and optionally written with the command that made it.

A claim check stays one readable script; this module holds only what every one of them would
otherwise repeat. Import it as ``from common import ...`` (``scripts/claims/`` is the script's
own folder, so it is on ``sys.path``); importing it also puts this checkout's ``lrm`` and
``lra`` first on the path.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (after the path: this checkout's packages first)

import lrm  # noqa: E402
from lra.data.recall_tasks import mqar  # noqa: E402
from lra.quick import fit  # noqa: E402

TEST_SEED_OFFSET = 10_000  # held-out sequences: the training seed + this


def parser(doc: str, *, threads: int = 1, seed: int | None = 0,
           out: bool = False) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first paragraph and whose help shows every
    default; with the options every claim takes (``--threads``, ``--seed``, ``--out``)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=threads,
                   help="torch threads (1 is fair on a shared CPU)")
    if seed is not None:
        p.add_argument("--seed", type=int, default=seed, help="seed of data, weights and batches")
    if out:
        p.add_argument("--out", default=None,
                       help="also write the report (with the command) to this file")
    return p


def setup(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, set the torch threads, and record the command and the start time
    (``args.command``, ``args.t_start``)."""
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    args.command = f"python {shown} {shlex.join(sys.argv[1:] if argv is None else argv)}".strip()
    args.t_start = time.time()
    return args


def build_lm(*, d: int, layers: int, vocab: int, seed: int, mixer: str | None = None,
             mixer_kwargs: dict[str, Any] | None = None, **config: Any) -> lrm.LRModel:
    """``lrm.LRModel`` with an LM head, its weights drawn after ``torch.manual_seed(seed)``;
    ``config``: any further ``ModelConfig`` field (``mlp_ratio``, ``pattern``, ...)."""
    torch.manual_seed(seed)
    if mixer is not None:
        config["mixer"] = mixer
    return lrm.LRModel(lrm.ModelConfig(d_model=d, n_layers=layers, vocab_size=vocab, head="lm",
                                       mixer_kwargs=mixer_kwargs or {}, **config))


def mqar_split(n_train: int, n_test: int, seq_len: int, *, vocab: int, kv: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MQAR training and held-out sets (``lra.data.recall_tasks.mqar``; the test seed is offset)."""
    x, y = mqar(n_train, seq_len, vocab_size=vocab, num_kv_pairs=kv, seed=seed)
    xt, yt = mqar(n_test, seq_len, vocab_size=vocab, num_kv_pairs=kv,
                  seed=seed + TEST_SEED_OFFSET)
    return x, y, xt, yt


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **fit_kwargs: Any
          ) -> tuple[list[float], float]:
    """``lra.quick.fit``; returns the losses and the wall seconds it took."""
    t0 = time.time()
    losses = fit(model, x, y, **fit_kwargs)
    return losses, time.time() - t0


def report(text: str, args: argparse.Namespace) -> None:
    """Print the report; with ``--out``, also write it under a line with the command."""
    print(text)
    if getattr(args, "out", None):
        Path(args.out).write_text(f"Command: `{args.command}`\n\n{text.strip()}\n",
                                  encoding="utf-8")
