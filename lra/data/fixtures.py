"""Tiny stand-ins for the six LRA tasks, written in the real on-disk formats.

The tests and ``notebooks/lra_tour.ipynb`` use them where the real data cannot be downloaded.
ListOps and Pathfinder come from the real generators (:mod:`lra.data.listops_generator`,
:mod:`lra.data.pathfinder_generator`), just small; IMDB, AAN and CIFAR-10 are synthetic: made-up
reviews, made-up paper pairs and colour-block "images", in exactly the files and columns the loaders
read (HF parquet, LRA TSV). Their *content* says nothing about the real tasks.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.listops_generator import ListOpsConfig, generate_listops
from lra.data.pathfinder_generator import generate_pathfinder

POSITIVE = ["a wonderful film", "truly great acting", "I loved every minute", "a délight"]
NEGATIVE = ["a boring mess", "terrible pacing", "I want my two hours back", "the plot is awful"]


def demo_dir() -> Path:
    """A fresh temporary folder for fixtures."""
    return Path(tempfile.mkdtemp(prefix="lra-fixtures-"))


def write_listops(root: str | Path, n: tuple[int, int, int] = (24, 8, 8), seed: int = 0,
                  max_length: int = 60) -> Path:
    """Short generated ListOps expressions in ``root/listops-1000/basic_*.tsv``."""
    cfg = ListOpsConfig(max_depth=4, max_args=4, min_length=4, max_length=max_length)
    return generate_listops(root, *n, cfg=cfg, seed=seed, progress=False)


def write_pathfinder(root: str | Path, size: int = 32, n_images: int = 20, per_batch: int = 10,
                     seed: int = 0) -> Path:
    """Generated Pathfinder images in ``root/pathfinder<size>/curv_contour_length_14``."""
    return generate_pathfinder(root, size, 14, n_images, per_batch, seed, progress=False)


def _reviews(rng: np.random.Generator, n: int) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        words = POSITIVE if label else NEGATIVE
        k = int(rng.integers(1, 12))
        texts.append(". ".join(words[int(i)] for i in rng.integers(0, len(words), k)) + ".")
        labels.append(label)
    return texts, labels


def write_imdb(root: str | Path, n_train: int = 24, n_test: int = 12, seed: int = 0,
               fmt: str = "parquet") -> Path:
    """Synthetic reviews as HF ``stanfordnlp/imdb`` files: ``fmt="parquet"`` writes the hub's
    ``plain_text/{train,test,unsupervised}-00000-of-00001.parquet``; ``fmt="disk"`` a
    ``DatasetDict.save_to_disk`` folder. Returns the folder to pass as ``dataset=``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    splits = {"train": _reviews(rng, n_train), "test": _reviews(rng, n_test)}
    if fmt == "disk":
        import datasets

        feats = datasets.Features({"text": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=["neg", "pos"])})
        dd = datasets.DatasetDict({
            s: datasets.Dataset.from_dict({"text": t, "label": y}, features=feats)
            for s, (t, y) in splits.items()})
        dd.save_to_disk(str(root))
        return root
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    splits["unsupervised"] = (_reviews(rng, 4)[0], [-1] * 4)
    for s, (texts, labels) in splits.items():
        table = pa.table({"text": pa.array(texts, pa.string()),
                          "label": pa.array(labels, pa.int64())})
        pq.write_table(table, folder / f"{s}-00000-of-00001.parquet")
    return root


def write_aan(root: str | Path, n: tuple[int, int, int] = (16, 6, 6), seed: int = 0) -> Path:
    """Synthetic paper pairs in ``root/tsv_data/new_aan_pairs.{train,eval,test}.tsv``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tsv_data"
    folder.mkdir(parents=True, exist_ok=True)
    topics = ["parsing", "machine translation", "summarization", "speech"]
    for split, count in zip(("train", "eval", "test"), n, strict=True):
        lines = []
        for i in range(count):
            t1, t2 = rng.integers(0, len(topics), 2)
            label = int(t1 == t2)
            text1 = f"We study {topics[t1]}. " * int(rng.integers(1, 6))
            text2 = f"Our {topics[t2]} system \"improves\" results. " * int(rng.integers(1, 6))
            lines.append(f"{float(label)}\tP{i:02d}-1\tP{i:02d}-2\t{text1}\t{text2}\n")
        (folder / f"new_aan_pairs.{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return folder


def cifar_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 RGB stand-in: a noisy colour block whose hue depends on the class."""
    img = rng.integers(0, 64, (32, 32, 3), dtype=np.uint8)
    colour = np.array([(label * 25) % 256, (label * 70) % 256, 255 - label * 20], dtype=np.uint8)
    r0, c0 = (int(v) for v in rng.integers(0, 16, 2))
    img[r0 : r0 + 16, c0 : c0 + 16] = colour
    return img


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_cifar(root: str | Path, n_train: int = 20, n_test: int = 6, seed: int = 0,
                fmt: str = "parquet") -> Path:
    """Synthetic images as HF ``uoft-cs/cifar10`` files (``img`` PNG struct, ``label``);
    ``fmt`` as in :func:`write_imdb`. Returns the folder to pass as ``dataset=``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    splits = {}
    for s, n in (("train", n_train), ("test", n_test)):
        labels = [int(v) for v in rng.integers(0, 10, n)]
        splits[s] = ([_png(cifar_image(y, rng)) for y in labels], labels)
    if fmt == "disk":
        import datasets

        feats = datasets.Features({"img": datasets.Image(),
                                   "label": datasets.ClassLabel(num_classes=10)})
        dd = datasets.DatasetDict({
            s: datasets.Dataset.from_dict(
                {"img": [{"bytes": b, "path": None} for b in imgs], "label": y}, features=feats)
            for s, (imgs, y) in splits.items()})
        dd.save_to_disk(str(root))
        return root
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for s, (imgs, labels) in splits.items():
        cells = pa.array([{"bytes": b, "path": None} for b in imgs], type=img_type)
        pq.write_table(pa.table({"img": cells, "label": pa.array(labels, pa.int64())}),
                       folder / f"{s}-00000-of-00001.parquet")
    return root


def write_all(root: str | Path) -> dict[str, dict[str, Any]]:
    """Write every fixture under ``root``; returns DataModule keyword arguments per task."""
    root = Path(root)
    release = root / "lra_release"
    write_listops(release)
    write_aan(release)
    write_pathfinder(release, 32, n_images=20)
    write_pathfinder(release, 128, n_images=10)
    imdb = write_imdb(root / "imdb")
    cifar = write_cifar(root / "cifar10")
    small = {"batch_size": 4}
    return {
        "listops": {"data_dir": str(release), **small},
        "text": {"data_dir": str(root), "dataset": str(imdb), "seq_len": 256, **small},
        "retrieval": {"data_dir": str(release), "seq_len": 256, **small},
        "image": {"data_dir": str(root), "dataset": str(cifar), **small},
        "pathfinder": {"data_dir": str(release), "resolution": 32, **small},
        "pathx": {"data_dir": str(release), "resolution": 128, **small},
    }
