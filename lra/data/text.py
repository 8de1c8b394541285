"""LRA Text: IMDB movie reviews as UTF-8 bytes, truncated to 4096 tokens, 2 classes.

Source: Hugging Face ``stanfordnlp/imdb`` (columns ``text``, ``label``; 25k train / 25k test),
the same reviews as the tfds ``imdb_reviews`` that LRA used; or a local copy of it (see
:mod:`lra.data.hf`). Like LRA (and the S4 repo's default ``val_split=0``), the test set doubles
as the validation set; ``val_split > 0`` holds out a seeded random fraction of train instead.

Tokens (byte level, as LRA's ``ByteTextEncoder``):

=======  ====================================================
id       token
=======  ====================================================
0        ``<pad>`` (right padding)
1        ``<eos>`` (appended when ``append_eos``, as in S4)
2..257   byte value b is id ``b + 2``
=======  ====================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lra.data.common import DataFormatError, LRADataModule, TokenSequences, file_stamp, flatten

BYTE_OFFSET = 2
EOS_ID = 1
VOCAB_SIZE = 256 + BYTE_OFFSET


def encode_bytes(text: str | bytes, keep: int, eos: bool) -> np.ndarray:
    """Byte ids of ``text`` (UTF-8), first ``keep`` bytes, ``<eos>`` appended if asked."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    ids = np.frombuffer(raw[:keep], dtype=np.uint8).astype(np.int16) + BYTE_OFFSET
    return np.append(ids, np.int16(EOS_ID)) if eos else ids


def decode_bytes(ids: list[int] | torch.Tensor) -> str:
    """Inverse of :func:`encode_bytes` for display (specials dropped)."""
    raw = bytes(int(i) - BYTE_OFFSET for i in ids if int(i) >= BYTE_OFFSET)
    return raw.decode("utf-8", errors="replace")


def _source_stamp(source: str) -> Any:
    from pathlib import Path

    p = Path(source).expanduser()
    if not p.exists():
        return source
    files = [f for f in sorted(p.rglob("*")) if f.is_file()] if p.is_dir() else [p]
    return file_stamp([f for f in files if ".cache" not in f.parts])


class IMDBDataModule(LRADataModule):
    """LRA Text (IMDB bytes, 2 classes; vocabulary in the module docstring).

    Args:
        data_dir: root for the preprocessing cache (``data_dir/.cache``) and the hub cache.
        dataset: hub id (``stanfordnlp/imdb``) or a local ``save_to_disk``/parquet folder.
        batch_size: examples per batch (S4 repo: 16; LRA: 32).
        num_workers: DataLoader worker processes; None (the default) uses what the machine
            has (lra.data.common.default_num_workers).
        seq_len: maximum tokens per example, ``<eos>`` included (LRA: 4096 bytes).
        seed: seeds the shuffling of the training set and the ``val_split`` hold-out; None
            (the default) shuffles with the run's seed (``seed_everything``), so that a second
            seed changes the batch order, and holds out with 0, so that every seed validates
            on the same examples.
        val_split: fraction of train held out for validation; 0 validates on test (LRA).
        append_eos: append ``<eos>`` (id 1).
        fixed_length: pad every batch to ``seq_len`` instead of its longest example.
        limit_train / limit_val / limit_test: keep only the first N examples of a split.
        cache_dir: where the preprocessed tensors go (default ``data_dir/.cache``).
    """

    task = "imdb"
    n_classes = 2
    vocab_size = VOCAB_SIZE

    def __init__(
        self,
        data_dir: str = "data",
        dataset: str = "stanfordnlp/imdb",
        batch_size: int = 16,
        num_workers: int | None = None,
        seq_len: int = 4096,
        seed: int | None = None,
        val_split: float = 0.0,
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
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {val_split}")
        self.dataset, self.seq_len, self.val_split = dataset, seq_len, val_split
        self.append_eos = append_eos

    def _holdout_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    def cache_key(self) -> dict[str, Any]:
        return {"source": _source_stamp(self.dataset), "seq_len": self.seq_len,
                "eos": self.append_eos, "val_split": self.val_split, "seed": self._holdout_seed()}

    def _read(self, split: str) -> tuple[list[str], np.ndarray]:
        from lra.data.hf import read_split

        table = read_split(self.dataset, split, ["text", "label"], self.cache_dir / "hf")
        labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
        bad = ~np.isin(labels, [0, 1])
        if bad.any():
            raise DataFormatError(f"{self.dataset} [{split}]: label {labels[bad][0]} at row "
                                  f"{int(np.argmax(bad))} is not 0/1")
        return table.column("text").to_pylist(), labels

    def build(self) -> dict[str, Any]:
        train_text, train_y = self._read("train")
        test_text, test_y = self._read("test")
        splits = {"train": (train_text, train_y), "test": (test_text, test_y)}
        if self.val_split > 0:
            perm = np.random.default_rng(self._holdout_seed()).permutation(len(train_text))
            n_val = round(self.val_split * len(train_text))
            val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            splits["val"] = ([train_text[i] for i in val_idx], train_y[val_idx])
            splits["train"] = ([train_text[i] for i in tr_idx], train_y[tr_idx])
        else:
            splits["val"] = splits["test"]
        keep = self.seq_len - int(self.append_eos)
        out = {}
        for split, (texts, labels) in splits.items():
            n = len(texts) if self.limits[split] is None else min(len(texts), self.limits[split])
            tokens, offsets = flatten([encode_bytes(t, keep, self.append_eos) for t in texts[:n]])
            out[split] = {"tokens": tokens, "offsets": offsets,
                          "targets": torch.from_numpy(labels[:n].copy())}
        return out

    def make_dataset(self, d: dict[str, torch.Tensor]) -> TokenSequences:
        return TokenSequences(d["tokens"], d["offsets"], d["targets"])
