"""A DataLoader that resumes mid-epoch exactly where a killed run stopped.

Lightning saves the ``state_dict()`` of every train dataloader that has one in its checkpoints
and hands it back through ``load_state_dict()`` on resume. This loader's order is a pure
function of (seed, epoch), and its state is the number of batches of the current epoch that
were used for training, so after a resume the next batch is the one the killed run would have
seen next. :func:`save_atomic` is the write every resumable file here goes through (the
quick loop's checkpoints, the data caches).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` so that a reader never sees a half-written file: written under
    a temporary name of its own per writer (processes *and* threads may write the same file at
    once; the last rename wins, all are whole), then renamed. A failed write leaves no
    temporary file and raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices in a seeded order per epoch; can start part-way into an epoch.

    It counts epochs itself (each new pass over it is the next epoch): Lightning's
    ``set_epoch`` reaches samplers, not batch samplers.

    Under data parallelism (``torch.distributed`` initialised when the pass starts, or
    ``num_replicas``/``rank`` given) every rank takes the examples ``rank, rank + R, ...`` of
    the epoch's order (R replicas), wrapped around so that all ranks get the same number of
    batches, as ``DistributedSampler`` does; the state (epoch, batches used) is the same on
    every rank, so a resumed run continues where it stopped on all of them.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        if n <= 0 or batch_size <= 0 or (drop_last and n < batch_size):
            raise ValueError(f"need at least one batch: {n} examples, batch_size {batch_size}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self._replicas = (num_replicas, rank)
        self.drop_last = drop_last
        self.epoch = -1  # the epoch of the pass in progress (or last finished)
        self.yielded = 0  # batches handed out in that pass
        self._resume: tuple[int, int] | None = None

    def _world(self) -> tuple[int, int]:
        replicas, rank = self._replicas
        if replicas is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                return dist.get_world_size(), dist.get_rank()
            return 1, 0
        return replicas, rank or 0

    def _per_rank(self) -> int:
        return -(-self.n // self._world()[0])  # examples per rank

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self._resume is not None:
            self.epoch, start = self._resume
            self._resume = None
        else:
            self.epoch, start = self.epoch + 1, 0
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        replicas, rank = self._world()
        if replicas > 1:  # this rank's share, wrapped so that every rank has as many
            order = order.repeat(2)[:self._per_rank() * replicas][rank::replicas]
        self.yielded = start
        for b in range(start, len(self)):
            self.yielded = b + 1
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_used": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, used = int(state["epoch"]), int(state["batches_used"])
        # a pass that was complete resumes at the start of the next epoch
        self._resume = (epoch + 1, 0) if used >= len(self) else (max(epoch, 0), used)


class ResumableLoader(DataLoader):
    """``DataLoader(dataset, batch_sampler=EpochBatchSampler(...))`` with a resumable state.

    Lightning takes a train batch only when it trains on it (no look-ahead for sized loaders,
    checked in tests/lra/test_harness.py), so the batches this loader hands out are the batches
    used. Loader workers, though, draw indices from the sampler ahead of time: the state
    therefore counts the batches handed out here, not the sampler's.
    """

    _handed_out: int | None = None  # batches of the current pass given to the consumer

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, **kwargs: Any) -> None:
        sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed,
                                    drop_last=drop_last)
        super().__init__(dataset, batch_sampler=sampler, **kwargs)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        resume = self.batch_sampler._resume
        self._handed_out = resume[1] if resume is not None else 0
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        state = self.batch_sampler.state_dict()
        if self._handed_out is not None:
            state["batches_used"] = self._handed_out
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)
