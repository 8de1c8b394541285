"""Shared machinery of the LRA DataModules: datasets, padding collate, cache, file look-up.

Every task module turns its raw files into a few tensors once ("preprocessing") and keeps them
in a cache file ``<cache_dir>/<task>-<key>.pt``; the key hashes every setting that changes the
tensors and the size/mtime of every source file, so edited data or settings rebuild it, and a
second load is a memory-mapped ``torch.load``.

Two storage shapes cover the six tasks:

- variable-length token sequences (ListOps, Text, Retrieval): one flat ``int16`` tensor of all
  tokens plus ``offsets`` (N + 1), so sequence i is ``tokens[offsets[i]:offsets[i + 1]]``;
- fixed-length pixel sequences (Image, Pathfinder, Path-X): one ``uint8`` tensor (N, L).

The collate function pads on the right with id 0 and returns the batch dict of the contract:
``inputs`` (B, L) long, ``lengths`` (B,) long, ``targets`` (B,) long (+ ``inputs2``,
``lengths2`` for retrieval).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lra.resumable import ResumableLoader, save_atomic

PAD_ID = 0
LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
RELEASE_HINT = (
    f"download the LRA release ({LRA_RELEASE_URL}; unpack with `tar xzf lra_release.gz`) "
    "and point data_dir at the unpacked lra_release/ folder"
)
CACHE_VERSION = 1


# ---------------------------------------------------------------------------------- datasets
class TokenSequences(Dataset):
    """Variable-length sequences stored flat: item i is ``(tokens[off[i]:off[i+1]], target)``."""

    def __init__(self, tokens: torch.Tensor, offsets: torch.Tensor, targets: torch.Tensor):
        if offsets.numel() != targets.numel() + 1:
            raise ValueError("offsets must have one more entry than targets")
        self.tokens, self.offsets, self.targets = tokens, offsets, targets

    def __len__(self) -> int:
        return self.targets.numel()

    def sequence(self, i: int) -> torch.Tensor:
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": self.sequence(i), "targets": int(self.targets[i])}


class PairSequences(Dataset):
    """Two aligned :class:`TokenSequences` sharing targets (AAN retrieval)."""

    def __init__(self, first: TokenSequences, second: TokenSequences):
        if len(first) != len(second):
            raise ValueError("both sides of a pair dataset need the same length")
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": self.first.sequence(i), "inputs2": self.second.sequence(i),
                "targets": int(self.first.targets[i])}


class FixedSequences(Dataset):
    """Fixed-length sequences (pixels): item i is ``(data[i], target)``, never padded."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor):
        if data.shape[0] != targets.numel():
            raise ValueError("data and targets disagree on the number of examples")
        self.data, self.targets = data, targets

    def __len__(self) -> int:
        return self.targets.numel()

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": self.data[i], "targets": int(self.targets[i])}


def _pad(seqs: Sequence[torch.Tensor], length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([s.numel() for s in seqs], dtype=torch.long)
    width = int(lengths.max()) if length is None else length
    if bool((lengths == width).all()):  # fixed-length pixels: nothing to pad
        return torch.stack(list(seqs)).long(), lengths
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : s.numel()] = s[:width].long()
    return out, lengths.clamp(max=width)


def collate(batch: list[dict[str, Any]],
            fixed_length: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of examples on the right with id 0 (to ``fixed_length`` if given).

    Retrieval pairs are padded to one common width, so ``inputs`` and ``inputs2`` can be stacked.
    """
    targets = torch.tensor([b["targets"] for b in batch], dtype=torch.long)
    first = [b["inputs"] for b in batch]
    if "inputs2" not in batch[0]:
        inputs, lengths = _pad(first, fixed_length)
        return {"inputs": inputs, "lengths": lengths, "targets": targets}
    second = [b["inputs2"] for b in batch]
    width = fixed_length or max(max(s.numel() for s in first), max(s.numel() for s in second))
    inputs, lengths = _pad(first, width)
    inputs2, lengths2 = _pad(second, width)
    return {"inputs": inputs, "lengths": lengths, "inputs2": inputs2, "lengths2": lengths2,
            "targets": targets}


def flatten(seqs: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate integer sequences (lists/arrays) into ``(int16 tokens, int64 offsets)``."""
    import numpy as np

    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = np.zeros(int(offsets[-1]), dtype=np.int16)
    for s, a, b in zip(seqs, offsets[:-1], offsets[1:], strict=True):
        flat[a:b] = s
    return torch.from_numpy(flat), torch.from_numpy(offsets)


# ------------------------------------------------------------------------------- file helpers
def find_file(data_dir: str | Path, candidates: Sequence[str], what: str, hint: str) -> Path:
    """Return the first ``data_dir/<candidate>`` that is a file, else a clear FileNotFoundError."""
    root = Path(data_dir).expanduser()
    tried = [root / c for c in candidates]
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{what} not found: expected {tried[0]}"
        + (f" (also looked at {', '.join(str(t) for t in tried[1:])})" if len(tried) > 1 else "")
        + f". To get it, {hint}."
    )


def file_stamp(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """Identity of source files for cache keys: (path, size, mtime_ns)."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns))
    return out


class DataFormatError(ValueError):
    """A source file exists but does not have the expected format."""


# ------------------------------------------------------------------------------------- cache
def cache_path(cache_dir: Path, task: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha1(
        json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    return cache_dir / f"{task}-{digest}.pt"


def load_or_build(path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Load the cache at ``path`` (memory-mapped) or build it, save it atomically, and return it."""
    if path.is_file():
        try:
            return torch.load(path, mmap=True, weights_only=True)
        except Exception as err:  # a truncated cache file: rebuild it
            warnings.warn(f"ignoring unreadable cache {path} ({err}); rebuilding it")
    data = build()
    try:  # the leaderboard's parallel runs may build the same cache at once
        save_atomic(data, path)
    except OSError as err:
        warnings.warn(f"could not write the preprocessing cache {path} ({err}); continuing "
                      "without it (set cache_dir to a writable folder to make reloads fast)")
    return data


# ------------------------------------------------------------------------------- DataModule
class LRADataModule(pl.LightningDataModule):
    """Base of the LRA DataModules: splits, limits, cache, loaders, batch dicts.

    Subclasses set ``task``, ``n_classes``, ``vocab_size``, ``seq_len``, implement
    :meth:`cache_key` and :meth:`build` (returning ``{"train": ..., "val": ..., "test": ...}``
    of tensors) and :meth:`make_dataset`.
    """

    task: str = "lra"
    head: str = "classify"
    vocab_size: int
    n_classes: int
    seq_len: int

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        num_workers: int | None,
        seed: int | None,
        limit_train: int | None,
        limit_val: int | None,
        limit_test: int | None,
        cache_dir: str | None,
        fixed_length: bool = False,
    ):
        super().__init__()
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.seed = seed
        self.limits = {"train": limit_train, "val": limit_val, "test": limit_test}
        for split, n in self.limits.items():
            if n is not None and n < 1:
                raise ValueError(f"limit_{split} must be >= 1 or None, got {n}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.data_dir / ".cache"
        self.fixed_length = fixed_length
        self.datasets: dict[str, Dataset] = {}

    # -- to implement ---------------------------------------------------------------------
    def cache_key(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self) -> dict[str, Any]:
        raise NotImplementedError

    def make_dataset(self, split_data: dict[str, torch.Tensor]) -> Dataset:
        raise NotImplementedError

    # -- contract ---------------------------------------------------------------------------
    def model_hints(self) -> dict[str, Any]:
        """ModelConfig fields this task fixes."""
        return {"vocab_size": self.vocab_size, "n_classes": self.n_classes, "head": self.head,
                "pooling": "mean"}

    def _cache_file(self) -> Path:
        key = {"task": self.task, "limits": self.limits, **self.cache_key()}
        return cache_path(self.cache_dir, self.task, key)

    def prepare_data(self) -> None:
        load_or_build(self._cache_file(), self.build)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data = load_or_build(self._cache_file(), self.build)
        self.datasets = {s: self.make_dataset(data[s]) for s in ("train", "val", "test")}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        fixed = self.seq_len if self.fixed_length else None
        common = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                      pin_memory=torch.cuda.is_available(), collate_fn=_Collate(fixed))
        if shuffle:
            # a seeded order per epoch whose position is saved in checkpoints, so that a killed
            # run resumes mid-epoch on the very next batch (lra/resumable.py)
            return ResumableLoader(self.datasets[split], self.batch_size, shuffle=True,
                                   seed=self.shuffle_seed(), **common)
        return DataLoader(self.datasets[split], batch_size=self.batch_size, **common)

    def shuffle_seed(self) -> int:
        """The seed of the training set's batch order: ``seed`` where given, else the run's seed
        (what ``seed_everything`` gave torch, read when the loader is made: Lightning seeds
        before it asks for loaders, on a resume too, so a resumed run gets the same order)."""
        return self.seed if self.seed is not None else torch.initial_seed() % 2**32

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def default_num_workers() -> int:
    """DataLoader workers when a recipe names none: one core stays with the training process,
    at most 4 (decoding a batch of LRA examples is cheap), none on a single core."""
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


class _Collate:
    """Picklable collate (for worker processes) with an optional fixed width."""

    def __init__(self, fixed_length: int | None):
        self.fixed_length = fixed_length

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(batch, self.fixed_length)
