"""LRA Image: CIFAR-10 as a sequence of 1024 grayscale pixels, 10 classes.

Source: Hugging Face ``uoft-cs/cifar10`` (columns ``img`` (PNG), ``label``; 50k train / 10k
test) or a local copy of it (see :mod:`lra.data.hf`). As in LRA's input pipeline
(``train[:90%]`` / ``train[90%:]``), the first 45k training images train and the last 5k
validate; the 10k test images test.

Tokens: pixel intensities 0..255 in row-major order, vocabulary 256, never padded (every
``lengths`` entry is 1024). Grayscale conversion, ``grayscale=``:

- ``"lra"`` (default): LRA's ``tf.image.rgb_to_grayscale`` then an integer cast, i.e.
  ``floor(255.5 * (0.2989 R + 0.5870 G + 0.1140 B) / 255)``;
- ``"pil"``: PIL's ``convert("L")`` (ITU-R 601-2 luma, rounded), which the S4 repo's
  torchvision ``Grayscale`` uses. The two differ by at most one grey level.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from lra.data.common import DataFormatError, FixedSequences, LRADataModule
from lra.data.text import _source_stamp

LRA_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)


def to_gray(img: Image.Image, method: str = "lra") -> np.ndarray:
    """(H, W) uint8 grayscale of a PIL image by LRA's or PIL's formula."""
    if method == "pil":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if method != "lra":
        raise ValueError(f"grayscale must be 'lra' or 'pil', got {method!r}")
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    gray = rgb @ LRA_GRAY_WEIGHTS
    return np.floor(gray * np.float32(255.5)).clip(0, 255).astype(np.uint8)


def _open(cell: Any, where: str) -> Image.Image:
    try:
        if isinstance(cell, dict):
            if cell.get("bytes") is not None:
                return Image.open(io.BytesIO(cell["bytes"]))
            if cell.get("path"):
                return Image.open(cell["path"])
        if isinstance(cell, (bytes, bytearray)):
            return Image.open(io.BytesIO(cell))
    except OSError as err:
        raise DataFormatError(f"{where}: cannot decode the image ({err})") from err
    raise DataFormatError(f"{where}: expected an image (bytes or path), got {type(cell).__name__}")


class CIFAR10DataModule(LRADataModule):
    """LRA Image (grayscale CIFAR-10, 1024 pixel tokens, 10 classes).

    Args:
        data_dir: root for the preprocessing cache (``data_dir/.cache``) and the hub cache.
        dataset: hub id (``uoft-cs/cifar10``) or a local ``save_to_disk``/parquet folder.
        batch_size: images per batch (S4 repo: 50; LRA: 256).
        num_workers: DataLoader worker processes; None (the default) uses what the machine
            has (lra.data.common.default_num_workers).
        seq_len: must be 1024 (32 x 32); accepted for a uniform interface.
        seed: seeds the shuffling of the training set; None (the default) takes the run's seed
            (``seed_everything``), so that a second seed changes the batch order as well as
            the initialisation.
        val_fraction: the last fraction of the training images used for validation (LRA: 0.1).
        grayscale: ``"lra"`` or ``"pil"`` (see the module docstring).
        limit_train / limit_val / limit_test: keep only the first N images of a split.
        cache_dir: where the preprocessed tensors go (default ``data_dir/.cache``).
    """

    task = "cifar10"
    n_classes = 10
    vocab_size = 256

    def __init__(
        self,
        data_dir: str = "data",
        dataset: str = "uoft-cs/cifar10",
        batch_size: int = 50,
        num_workers: int | None = None,
        seq_len: int = 1024,
        seed: int | None = None,
        val_fraction: float = 0.1,
        grayscale: str = "lra",
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(data_dir, batch_size, num_workers, seed, limit_train, limit_val,
                         limit_test, cache_dir)
        self.save_hyperparameters()
        if seq_len != 1024:
            raise ValueError(f"CIFAR-10 images are 32x32 = 1024 pixels; seq_len={seq_len}")
        if grayscale not in ("lra", "pil"):
            raise ValueError(f"grayscale must be 'lra' or 'pil', got {grayscale!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.dataset, self.seq_len = dataset, seq_len
        self.val_fraction, self.grayscale = val_fraction, grayscale

    def cache_key(self) -> dict[str, Any]:
        return {"source": _source_stamp(self.dataset), "val_fraction": self.val_fraction,
                "gray": self.grayscale}

    def _pixels(self, cells: list[Any], where: str) -> torch.Tensor:
        out = np.empty((len(cells), 1024), dtype=np.uint8)
        for i, cell in enumerate(cells):
            gray = to_gray(_open(cell, f"{where} row {i}"), self.grayscale)
            if gray.shape != (32, 32):
                raise DataFormatError(f"{where} row {i}: image is {gray.shape}, not 32x32")
            out[i] = gray.reshape(-1)
        return torch.from_numpy(out)

    def build(self) -> dict[str, Any]:
        from lra.data.hf import read_split

        rows = {}
        for split in ("train", "test"):
            table = read_split(self.dataset, split, ["img", "label"], self.cache_dir / "hf")
            labels = np.asarray(table.column("label").to_numpy(zero_copy_only=False), np.int64)
            if labels.size and not ((labels >= 0) & (labels < 10)).all():
                raise DataFormatError(f"{self.dataset} [{split}]: labels must be in 0..9")
            rows[split] = (table.column("img"), labels)
        n_all = len(rows["train"][1])
        n_train = n_all - round(self.val_fraction * n_all)
        parts = {"train": (0, n_train, rows["train"]), "val": (n_train, n_all, rows["train"]),
                 "test": (0, len(rows["test"][1]), rows["test"])}
        out = {}
        for split, (lo, hi, (col, ys)) in parts.items():
            if self.limits[split] is not None:
                hi = min(hi, lo + self.limits[split])
            cells = col.slice(lo, hi - lo).to_pylist()
            out[split] = {"pixels": self._pixels(cells, f"{self.dataset} [{split}]"),
                          "targets": torch.from_numpy(ys[lo:hi].copy())}
        return out

    def make_dataset(self, d: dict[str, torch.Tensor]) -> FixedSequences:
        return FixedSequences(d["pixels"], d["targets"])
