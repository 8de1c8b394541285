"""LRA Pathfinder (32 x 32) and Path-X (128 x 128): are the two dots joined by one path?

Source: the LRA release's ``pathfinder{32,64,128,256}/<difficulty>/`` folders, difficulty
``curv_contour_length_14`` (the hardest, which LRA uses; ``curv_baseline`` and
``curv_contour_length_9`` are contour lengths 6 and 9), each holding

- ``imgs/<i>/sample_<j>.png``: grayscale images;
- ``metadata/<i>.npy``: one row per image. Despite the suffix, the release's files are plain
  text, read line by line by both LRA's TFDS builder and the S4 repo: whitespace-separated
  fields ``imgs/<i> sample_<j>.png <j> <label> <continuity> <contour_length>
  <distractor_length> <paddle_length> <paddle_thickness> <paddle_margin> <n_contrasts>``
  (the fields of the original generator's ``accumulate_meta``). Only fields 0, 1 (the image
  path) and 3 (the label, 1 = the dots are connected) are used. A real NumPy ``.npy`` string
  array with the same columns is accepted too.

``lra generate pathfinder`` writes this layout.

Split: as in the S4 repo, the rows of all metadata files (files in numeric order) are split
80/10/10 by ``torch.randperm`` with ``split_seed`` (42 there), after dropping empty image files
(the release has one, in ``pathfinder32/curv_baseline``). Tokens are the pixel intensities 0..255
in row-major order, vocabulary 256, never padded: 1024 tokens for Pathfinder-32 and 16384 for
Path-X.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lra.data.common import (
    RELEASE_HINT,
    DataFormatError,
    FixedSequences,
    LRADataModule,
    file_stamp,
)
from lra.data.pathfinder_generator import difficulty_dir

RESOLUTIONS = (32, 64, 128, 256)


def _metadata_rows(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    if raw.startswith(b"\x93NUMPY"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise DataFormatError(f"{path}: unreadable NumPy metadata ({err})") from err
        return [[str(x) for x in row] for row in np.atleast_2d(arr)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: metadata is neither text rows nor a .npy array") from err
    return [line.split() for line in text.splitlines() if line.strip()]


def read_metadata(root: Path) -> list[tuple[str, int]]:
    """All ``(image path relative to root, label)`` rows under ``root/metadata``, in order."""
    files = sorted((root / "metadata").glob("*.npy"),
                   key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))
    if not files:
        raise FileNotFoundError(f"no metadata/*.npy files in {root}")
    samples = []
    for f in files:
        for k, row in enumerate(_metadata_rows(f)):
            if len(row) < 4:
                raise DataFormatError(f"{f}: row {k} has {len(row)} fields; expected at least 4 "
                                      "(image dir, file name, index, label)")
            try:
                label = int(float(row[3]))
            except ValueError:
                raise DataFormatError(f"{f}: row {k}: label {row[3]!r} is not a number") from None
            if label not in (0, 1):
                raise DataFormatError(f"{f}: row {k}: label {label} is not 0 or 1")
            samples.append((f"{row[0]}/{row[1]}", label))
    return samples


def decode_images(paths: list[Path], resolution: int) -> np.ndarray:
    """(N, resolution**2) uint8 pixels of grayscale PNGs; a clear error names a bad file."""
    out = np.empty((len(paths), resolution * resolution), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("L"), dtype=np.uint8)
        except OSError as err:
            raise DataFormatError(f"cannot decode the Pathfinder image {p}: {err}") from err
        if arr.shape != (resolution, resolution):
            raise DataFormatError(f"{p}: image is {arr.shape[1]}x{arr.shape[0]}, expected "
                                  f"{resolution}x{resolution}")
        out[i] = arr.reshape(-1)
    return out


def _decode_parallel(paths: list[Path], resolution: int, workers: int) -> np.ndarray:
    if workers <= 1 or len(paths) < 4000:
        return decode_images(paths, resolution)
    chunk = 2000
    parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        arrays = list(pool.map(decode_images, parts, [resolution] * len(parts)))
    return np.concatenate(arrays)


class PathfinderDataModule(LRADataModule):
    """LRA Pathfinder (``resolution=32``) and Path-X (``resolution=128``), 2 classes.

    Args:
        data_dir: the unpacked ``lra_release/`` (or ``pathfinder<res>/``, or the difficulty
            folder itself).
        resolution: image side: 32 (Pathfinder), 128 (Path-X), or 64 / 256.
        contour_length: 14 (LRA's hard split), 9 or 6 (``curv_baseline``).
        distractors: None for the release's data; N for data generated with N distractor
            paths per image (``lra generate pathfinder --distractors N``), read from the
            ``<difficulty>_distractors<N>`` folder.
        batch_size: images per batch (S4 repo: 64 for Pathfinder, 16 for Path-X).
        num_workers: DataLoader worker processes; None (the default) uses what the machine
            has (lra.data.common.default_num_workers).
        seq_len: ``resolution**2`` (or None); accepted for a uniform interface.
        seed: seeds the shuffling of the training set; None (the default) takes the run's seed
            (``seed_everything``), so that a second seed changes the batch order as well as
            the initialisation.
        split_seed: seeds the 80/10/10 split (S4 repo: 42).
        val_fraction / test_fraction: sizes of the validation and test splits.
        prep_workers: processes decoding PNGs on the first load (default: cores, at most 16).
        limit_train / limit_val / limit_test: keep only the first N images of a split.
        cache_dir: where the preprocessed tensors go (default ``data_dir/.cache``).
    """

    task = "pathfinder"
    n_classes = 2
    vocab_size = 256

    def __init__(
        self,
        data_dir: str = "data/lra_release",
        resolution: int = 32,
        contour_length: int = 14,
        distractors: int | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
        seq_len: int | None = None,
        seed: int | None = None,
        split_seed: int = 42,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        prep_workers: int | None = None,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(data_dir, batch_size, num_workers, seed, limit_train, limit_val,
                         limit_test, cache_dir)
        self.save_hyperparameters()
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution}")
        self.difficulty = difficulty_dir(contour_length, distractors)  # checks both
        if seq_len is not None and seq_len != resolution**2:
            raise ValueError(f"seq_len must be resolution**2 = {resolution**2}, got {seq_len}")
        if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
            raise ValueError("need val_fraction, test_fraction >= 0 with a sum below 1")
        self.resolution, self.contour_length = resolution, contour_length
        self.distractors = distractors
        self.seq_len = resolution**2
        self.task = f"pathfinder{resolution}"
        self.split_seed = split_seed
        self.fractions = (val_fraction, test_fraction)
        self.prep_workers = prep_workers or min(16, os.cpu_count() or 1)

    def root(self) -> Path:
        """The difficulty folder holding ``metadata/`` and ``imgs/``."""
        diff = self.difficulty
        res = f"pathfinder{self.resolution}"
        candidates = [self.data_dir / res / diff, self.data_dir / "lra_release" / res / diff,
                      self.data_dir / diff]
        if self.distractors is None:  # a bare difficulty folder, whose name is not checked
            candidates.append(self.data_dir)
        for c in candidates:
            if (c / "metadata").is_dir():
                return c
        raise FileNotFoundError(
            f"Pathfinder metadata not found: expected {candidates[0] / 'metadata'} (also looked "
            f"in {', '.join(str(c) for c in candidates[1:])}). To get it, {RELEASE_HINT}, or "
            f"generate it with `lra generate pathfinder --resolution {self.resolution} "
            f"--contour-length {self.contour_length}"
            + (f" --distractors {self.distractors}" if self.distractors is not None else "")
            + f" --out {self.data_dir}`."
        )

    def cache_key(self) -> dict[str, Any]:
        root = self.root()
        return {"metadata": file_stamp(sorted((root / "metadata").glob("*.npy"))),
                "res": self.resolution, "cl": self.contour_length, "split": self.split_seed,
                # only where set, so the caches of the release's layout stay valid
                **({"distractors": self.distractors} if self.distractors is not None else {}),
                "fractions": self.fractions}

    def build(self) -> dict[str, Any]:
        root = self.root()
        samples = []
        for rel, label in read_metadata(root):
            path = root / rel
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise FileNotFoundError(f"Pathfinder image listed in {root / 'metadata'} is "
                                        f"missing: {path}") from None
            if size == 0:
                warnings.warn(f"skipping the empty Pathfinder image {path}")
                continue
            samples.append((path, label))
        n = len(samples)
        n_val, n_test = int(self.fractions[0] * n), int(self.fractions[1] * n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test),
                  "test": (n - n_test, n)}
        out = {}
        for split, (lo, hi) in bounds.items():
            idx = perm[lo:hi].tolist()[: self.limits[split]]
            pixels = _decode_parallel([samples[i][0] for i in idx], self.resolution,
                                      self.prep_workers)
            out[split] = {"pixels": torch.from_numpy(pixels),
                          "targets": torch.tensor([samples[i][1] for i in idx], dtype=torch.long)}
        return out

    def make_dataset(self, d: dict[str, torch.Tensor]) -> FixedSequences:
        return FixedSequences(d["pixels"], d["targets"])
