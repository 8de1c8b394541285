"""LRA Retrieval: do two ACL Anthology (AAN) papers cite each other? Bytes, 4000 per paper.

Source: the LRA release's ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (147,086 / 18,090 /
17,437 pairs): no header, five tab-separated fields ``label id1 id2 text1 text2`` per line. As
in LRA's input pipeline, quotes are not special (fields are split on tabs only) and the label
may be written as a float (``1.0``). The ``eval`` file is the validation split.

Tokens: the bytes of each text, exactly as in :mod:`lra.data.text` (0 pad, 1 ``<eos>``, byte b
is ``b + 2``, 258 ids), each document truncated to ``seq_len`` (4000) tokens. A batch carries
``inputs``/``lengths`` for the first paper and ``inputs2``/``lengths2`` for the second, both
padded on the right to one common width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lra.data.common import (
    RELEASE_HINT,
    DataFormatError,
    LRADataModule,
    PairSequences,
    TokenSequences,
    file_stamp,
    find_file,
    flatten,
)
from lra.data.text import VOCAB_SIZE, encode_bytes

SPLIT_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
               "test": "new_aan_pairs.test.tsv"}


def read_pairs(path: Path, limit: int | None = None) -> tuple[list[bytes], list[bytes], list[int]]:
    """Read an AAN pairs TSV into (texts1, texts2, labels); texts stay raw bytes."""
    first, second, labels = [], [], []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(labels) >= limit:
                break
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise DataFormatError(f"{path}:{lineno}: expected 5 tab-separated fields (label, "
                                      f"id1, id2, text1, text2), got {len(fields)}")
            try:
                label = float(fields[0])
            except ValueError:
                raise DataFormatError(f"{path}:{lineno}: label {fields[0][:20]!r} is not a "
                                      "number") from None
            if label not in (0.0, 1.0):
                raise DataFormatError(f"{path}:{lineno}: label {label} is not 0 or 1")
            labels.append(int(label))
            first.append(fields[3])
            second.append(fields[4])
    return first, second, labels


class AANDataModule(LRADataModule):
    """LRA Retrieval (AAN byte pairs, 2 classes, ``head="retrieval"``).

    Args:
        data_dir: the unpacked ``lra_release/`` (or the ``tsv_data/`` folder itself).
        batch_size: pairs per batch (S4 repo: 64; LRA: 32).
        num_workers: DataLoader worker processes; None (the default) uses what the machine
            has (lra.data.common.default_num_workers).
        seq_len: maximum tokens per document, ``<eos>`` included (LRA: 4000).
        seed: seeds the shuffling of the training set; None (the default) takes the run's seed
            (``seed_everything``), so that a second seed changes the batch order as well as
            the initialisation.
        append_eos: append ``<eos>`` (id 1) to each document, as the S4 repo does.
        fixed_length: pad every batch to ``seq_len`` instead of its longest document.
        limit_train / limit_val / limit_test: keep only the first N pairs of a split.
        cache_dir: where the preprocessed tensors go (default ``data_dir/.cache``).
    """

    task = "aan"
    head = "retrieval"
    n_classes = 2
    vocab_size = VOCAB_SIZE

    def __init__(
        self,
        data_dir: str = "data/lra_release",
        batch_size: int = 64,
        num_workers: int | None = None,
        seq_len: int = 4000,
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
        return {
            split: find_file(self.data_dir, [f"tsv_data/{name}", f"lra_release/tsv_data/{name}",
                                             name], f"AAN {split} file", RELEASE_HINT)
            for split, name in SPLIT_FILES.items()
        }

    def cache_key(self) -> dict[str, Any]:
        return {"files": file_stamp(list(self.files().values())), "seq_len": self.seq_len,
                "eos": self.append_eos}

    def build(self) -> dict[str, Any]:
        keep = self.seq_len - int(self.append_eos)
        out = {}
        for split, path in self.files().items():
            first, second, labels = read_pairs(path, self.limits[split])
            t1, o1 = flatten([encode_bytes(t, keep, self.append_eos) for t in first])
            t2, o2 = flatten([encode_bytes(t, keep, self.append_eos) for t in second])
            out[split] = {"tokens": t1, "offsets": o1, "tokens2": t2, "offsets2": o2,
                          "targets": torch.tensor(labels, dtype=torch.long)}
        return out

    def make_dataset(self, d: dict[str, torch.Tensor]) -> PairSequences:
        return PairSequences(TokenSequences(d["tokens"], d["offsets"], d["targets"]),
                             TokenSequences(d["tokens2"], d["offsets2"], d["targets"]))
