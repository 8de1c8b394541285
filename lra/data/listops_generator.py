"""The ListOps generator: ``lra generate listops --out DIR`` writes
``DIR/listops-1000/basic_{train,val,test}.tsv``, the layout of the LRA release, read by the same
loader (:mod:`lra.data.listops`). Deterministic given the seed, independent of the number of
worker processes. About 500 expressions/s on one core of a small CPU box.

ListOps (Nangia & Bowman 2018, as configured by LRA)
-----------------------------------------------------
A random tree: below ``max_depth`` a node is an operator with probability 0.25 (LRA's
``VALUE_P``), otherwise a digit 0-9; at ``max_depth`` it is a digit. An operator (MAX, MIN, MED =
median, rounded down; SM = sum mod 10) takes 2..``max_args`` arguments. A tree's length counts
its digits, operators and closing brackets -- the tokens a model sees once parentheses are
dropped -- and only trees with ``min_length < length < max_length`` are kept (LRA: 500 and
2000), without duplicates. The text form is LRA's left-nested bracketing,
``( ( ( [MAX 2 ) 9 ) ] )`` for MAX(2, 9); the target is the value of the whole tree.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from lra.data.workers import progress_bar, worker_pool

LISTOPS_OPS = ("[MAX", "[MIN", "[MED", "[SM")
VALUE_P = 0.25


@dataclass(frozen=True)
class ListOpsConfig:
    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000


def _apply(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[SM":
        return sum(args) % 10
    s = sorted(args)  # [MED: the median, rounded down when the count is even
    k = len(s)
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) // 2


def listops_tree(rng: random.Random, cfg: ListOpsConfig, depth: int = 1) -> tuple[str, int, int]:
    """One random expression: ``(text, value, length)``."""
    if depth >= cfg.max_depth or rng.random() > VALUE_P:
        v = rng.randrange(10)
        return str(v), v, 1
    n_args = rng.randint(2, cfg.max_args)
    children = [listops_tree(rng, cfg, depth + 1) for _ in range(n_args)]
    op = rng.choice(LISTOPS_OPS)
    text = "( " * (n_args + 1) + op + " " + " ) ".join(c[0] for c in children) + " ) ] )"
    return text, _apply(op, [c[1] for c in children]), 2 + sum(c[2] for c in children)


def listops_value(text: str) -> int:
    """Evaluate an expression in the TSV text form (a check independent of the generator)."""
    stack: list[list] = []
    result = None
    for tok in text.replace("(", " ").replace(")", " ").split():
        if tok in LISTOPS_OPS:
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            value = _apply(op, args)
            if stack:
                stack[-1].append(value)
            else:
                result = value
        elif stack:
            stack[-1].append(int(tok))
        else:
            result = int(tok)
    if stack or result is None:
        raise ValueError(f"unbalanced ListOps expression: {text[:80]}")
    return result


def _listops_chunk(args: tuple[int, int, int, ListOpsConfig]) -> list[tuple[str, int]]:
    seed, chunk, n, cfg = args
    rng = random.Random(f"listops-{seed}-{chunk}")
    out = []
    while len(out) < n:
        text, value, length = listops_tree(rng, cfg)
        if cfg.min_length < length < cfg.max_length:
            out.append((text, value))
    return out


def generate_listops(out: str | Path, n_train: int = 96000, n_val: int = 2000,
                     n_test: int = 2000, cfg: ListOpsConfig | None = None, seed: int = 0,
                     workers: int = 1, task: str = "basic", progress: bool = True) -> Path:
    """Write ``out/listops-1000/{task}_{train,val,test}.tsv``; returns that folder."""
    cfg = cfg or ListOpsConfig()
    if not 0 <= cfg.min_length < cfg.max_length - 1:
        raise ValueError("need 0 <= min_length < max_length - 1")
    total = n_train + n_val + n_test
    chunk = max(1, min(500, total // 16))  # independent of workers: same output
    folder = Path(out) / "listops-1000"
    folder.mkdir(parents=True, exist_ok=True)
    quota = [("train", n_train), ("val", n_val), ("test", n_test)]
    files = {split: open(folder / f"{task}_{split}.tsv", "w", encoding="utf-8")  # noqa: SIM115
             for split, _ in quota}
    seen: set[bytes] = set()  # digests only: the expressions stream to the files
    written = 0
    try:
        for f in files.values():
            f.write("Source\tTarget\n")
        with progress_bar(progress, "ListOps", total) as bar, worker_pool(workers) as pool:
            k = 0
            while written < total:
                # chunks are consumed in order, so the output does not depend on ``workers``
                jobs = [(seed, k + i, chunk, cfg) for i in range(max(1, 2 * workers))]
                k += len(jobs)
                for examples in pool.imap(_listops_chunk, jobs) if pool else map(
                        _listops_chunk, jobs):
                    for text, value in examples:
                        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
                        if written >= total or digest in seen:
                            continue
                        seen.add(digest)
                        split = "train" if written < n_train else (
                            "val" if written < n_train + n_val else "test")
                        files[split].write(f"{text}\t{value}\n")
                        written += 1
                        bar.advance(1)
    finally:
        for f in files.values():
            f.close()
    return folder

