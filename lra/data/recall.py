"""Synthetic recall as a LightningDataModule: generated in memory, seeded, no download.

The training set is generated once at ``seq_len``; validation has one set per length in
``[seq_len] + eval_lengths`` (length extrapolation: train at L, test at 2L..16L), logged as
``val/acc`` for the training length and ``val_L<length>/acc`` for the others.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lra.data import recall_tasks
from lra.resumable import ResumableLoader


class _Pairs(Dataset):
    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[i], "targets": self.targets[i]}


class RecallDataModule(pl.LightningDataModule):
    """MQAR, selective copying, induction heads or passkey (see :mod:`lra.data.recall_tasks`).

    Args:
        task: ``mqar`` | ``selective_copying`` | ``induction_heads`` | ``passkey``.
        seq_len: the training length L.
        task_kwargs: the generator's options. The default, ``{vocab_size: 256,
            num_kv_pairs: 16}`` for MQAR, is the README's main job; other tasks use their
            generator's defaults when ``task_kwargs`` is left out.
        train_size, val_size: examples generated for training and for each validation length.
        eval_lengths: extra validation (and test) lengths for length extrapolation.
        batch_size, eval_batch_size: per step; eval defaults to batch_size.
        seed: the training set uses ``seed``, validation ``seed + 1000 + i``, test
            ``seed + 2000 + i``, so the three never share examples by construction of the RNG.
    """

    def __init__(self, task: str = "mqar", seq_len: int = 128,
                 task_kwargs: dict[str, Any] | None = None, train_size: int = 20_000,
                 val_size: int = 1_000, eval_lengths: list[int] | None = None,
                 batch_size: int = 64, eval_batch_size: int | None = None, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        if task not in recall_tasks.TASKS:
            raise ValueError(f"unknown recall task {task!r}; valid: "
                             f"{', '.join(recall_tasks.TASKS)}")
        if task_kwargs is None:
            task_kwargs = {"vocab_size": 256, "num_kv_pairs": 16} if task == "mqar" else {}
        self.task, self.seq_len, self.task_kwargs = task, seq_len, dict(task_kwargs)
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.lengths = [seq_len, *(eval_lengths or [])]
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_names = ["val"] + [f"val_L{n}" for n in self.lengths[1:]]
        self.test_names = ["test"] + [f"test_L{n}" for n in self.lengths[1:]]
        self.vocab_size = recall_tasks.vocab_size_of(task, **self.task_kwargs)
        self._train: _Pairs | None = None

    def model_hints(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "n_classes": self.vocab_size, "head": "lm"}

    def _make(self, n: int, length: int, seed: int) -> _Pairs:
        return _Pairs(*recall_tasks.make(self.task, n, length, seed=seed, **self.task_kwargs))

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = self._make(self.train_size, self.seq_len, self.seed)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return ResumableLoader(self._train, self.batch_size, shuffle=True, seed=self.seed,
                               drop_last=True, num_workers=self.num_workers)

    def _eval(self, offset: int) -> list[DataLoader]:
        return [DataLoader(self._make(self.val_size, n, self.seed + offset + i),
                           batch_size=self.eval_batch_size, num_workers=self.num_workers)
                for i, n in enumerate(self.lengths)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval(1000)

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval(2000)
