"""LRA ListOps: nested MAX/MIN/MED/SM expressions over digits, 10 classes (the value).

Source: the LRA release's ``listops-1000/basic_{train,val,test}.tsv`` (96k / 2k / 2k rows), a
header ``Source\\tTarget`` then one expression and its value per line, e.g.
``( ( ( [MAX 2 ) 9 ) ] )\\t9``; ``lra generate listops`` writes the same layout.

Tokens: like the LRA input pipeline and the S4 repo's loader, the parentheses are dropped (they
carry no information beyond ``[OP ... ]``) and the rest is split on whitespace. The vocabulary is
fixed (the S4 repo builds the same 18 entries from the training set):

====  ==========================
id    token
====  ==========================
0     ``<pad>`` (right padding)
1     ``<unk>`` (reserved; never produced: see below)
2     ``<eos>`` (appended when ``append_eos``, as in the S4 repo)
3-12  digits ``0`` .. ``9``
13    ``[MAX``
14    ``[MIN``
15    ``[MED``
16    ``[SM``
17    ``]``
====  ==========================

Any other token is refused with its file and line: the LRA generator writes only these symbols
(its operators are MAX, MIN, MED and SM over the digits), so another token means a corrupt or
foreign file, which would otherwise train silently on ``<unk>``.

Sequences longer than ``seq_len`` (2048 by default, as in the S4 repo; LRA keeps expressions
under 2000 tokens) are truncated, keeping room for ``<eos>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lra.data.common import (
    RELEASE_HINT,
    DataFormatError,
    LRADataModule,
    TokenSequences,
    file_stamp,
    find_file,
    flatten,
)

SPECIALS = ["<pad>", "<unk>", "<eos>"]
SYMBOLS = [str(d) for d in range(10)] + ["[MAX", "[MIN", "[MED", "[SM", "]"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + SYMBOLS)}
UNK_ID, EOS_ID = VOCAB["<unk>"], VOCAB["<eos>"]
SYMBOL_IDS = {tok: VOCAB[tok] for tok in SYMBOLS}  # what an expression may contain
SPLIT_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
_DROP_PARENS = str.maketrans({"(": " ", ")": " "})


def unknown_tokens(expression: str) -> list[str]:
    """The tokens of ``expression`` that are not ListOps symbols, in order of appearance."""
    return list(dict.fromkeys(t for t in expression.translate(_DROP_PARENS).split()
                              if t not in VOCAB or t in SPECIALS))


def tokenize(expression: str) -> list[int]:
    """Token ids of one ListOps expression (parentheses dropped, no ``<eos>``); a token outside
    the vocabulary is a ValueError."""
    tokens = expression.translate(_DROP_PARENS).split()
    try:
        return [SYMBOL_IDS[t] for t in tokens]
    except KeyError as err:
        raise ValueError(f"{err.args[0]!r} is not a ListOps token (valid: "
                         f"{' '.join(SYMBOLS)}, and parentheses)") from None


def detokenize(ids: list[int] | torch.Tensor) -> str:
    """Inverse of :func:`tokenize` for display (padding dropped)."""
    inv = {i: t for t, i in VOCAB.items()}
    return " ".join(inv[int(i)] for i in ids if int(i) != 0)


def read_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    """Read a ListOps TSV (header ``Source\\tTarget``) into expressions and labels."""
    sources, targets = [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header != ["Source", "Target"]:
            raise DataFormatError(f"{path}: expected the header 'Source\\tTarget', got {header}")
        for lineno, line in enumerate(f, start=2):
            if limit is not None and len(sources) >= limit:
                break
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataFormatError(f"{path}:{lineno}: expected 2 tab-separated fields "
                                      f"(Source, Target), got {len(fields)}")
            try:
                target = int(fields[1])
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: Target {fields[1]!r} is not an "
                                      "integer") from None
            if not 0 <= target <= 9:
                raise DataFormatError(f"{path}:{lineno}: Target {target} is not in 0..9")
            bad = unknown_tokens(fields[0])
            if bad:
                raise DataFormatError(
                    f"{path}:{lineno}: unknown token{'s' if len(bad) > 1 else ''} "
                    f"{', '.join(map(repr, bad[:5]))}; ListOps has only {' '.join(SYMBOLS)} and "
                    f"parentheses. The file is corrupt or not ListOps: fetch the LRA release "
                    f"again or regenerate it with `lra generate listops`.")
            sources.append(fields[0])
            targets.append(target)
    return sources, targets


class ListOpsDataModule(LRADataModule):
    """LRA ListOps (10 classes, <= 2000 tokens; vocabulary in the module docstring).

    Args:
        data_dir: the unpacked ``lra_release/`` (or the ``listops-1000/`` folder itself).
        batch_size: examples per batch (LRA and the S4 repo use 32).
        num_workers: DataLoader worker processes; None (the default) uses what the machine
            has (lra.data.common.default_num_workers).
        seq_len: maximum tokens per example, ``<eos>`` included (S4 repo: 2048).
        seed: seeds the shuffling of the training set; None (the default) takes the run's seed
            (``seed_everything``), so that a second seed changes the batch order as well as
            the initialisation.
        append_eos: append ``<eos>`` (id 2) as the S4 repo does.
        fixed_length: pad every batch to ``seq_len`` instead of its longest example.
        limit_train / limit_val / limit_test: keep only the first N examples of a split.
        cache_dir: where the preprocessed tensors go (default ``data_dir/.cache``).
    """

    task = "listops"
    n_classes = 10
    vocab_size = len(VOCAB)

    def __init__(
        self,
        data_dir: str = "data/lra_release",
        batch_size: int = 32,
        num_workers: int | None = None,
        seq_len: int = 2048,
        seed: int | None = None,
        append_eos: bool = True,
        fixed_length: bool = False,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(data_dir, batch_size, num_workers, seed, limit_train, limit_val,
                         limit_test, cache_dir, fixed_length)
        self.save_hyperparameters()
        self.seq_len = seq_len
        self.append_eos = append_eos

    def files(self) -> dict[str, Path]:
        hint = f"{RELEASE_HINT}, or generate it with `lra generate listops --out {self.data_dir}`"
        return {
            split: find_file(self.data_dir, [f"listops-1000/{name}", f"lra_release/listops-1000/"
                                             f"{name}", name], f"ListOps {split} file", hint)
            for split, name in SPLIT_FILES.items()
        }

    def cache_key(self) -> dict[str, Any]:
        return {"files": file_stamp(list(self.files().values())), "seq_len": self.seq_len,
                "eos": self.append_eos}

    def build(self) -> dict[str, Any]:
        out = {}
        keep = self.seq_len - int(self.append_eos)
        for split, path in self.files().items():
            sources, targets = read_tsv(path, self.limits[split])
            seqs = []
            for s in sources:
                ids = tokenize(s)[:keep]
                seqs.append([*ids, EOS_ID] if self.append_eos else ids)
            tokens, offsets = flatten(seqs)
            out[split] = {"tokens": tokens, "offsets": offsets,
                          "targets": torch.tensor(targets, dtype=torch.long)}
        return out

    def make_dataset(self, d: dict[str, torch.Tensor]) -> TokenSequences:
        return TokenSequences(d["tokens"], d["offsets"], d["targets"])
