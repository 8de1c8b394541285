"""Read a split of a Hugging Face dataset from the hub or from local files, as a pyarrow Table.

``source`` is either a hub id (``stanfordnlp/imdb``, ``uoft-cs/cifar10``) or a local path:

- a folder written by ``Dataset(Dict).save_to_disk`` (``<path>/<split>/state.json``);
- a folder of parquet or arrow files named like the hub's (``plain_text/train-00000-of-00001
  .parquet``), i.e. any file under it whose name is ``<split>.<ext>`` or starts with
  ``<split>-``, or that sits in a ``<split>/`` folder.

Local files are read with pyarrow directly; ``datasets`` is imported only for ``save_to_disk``
folders and hub ids.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

EXTS = (".parquet", ".arrow")


def _split_files(root: Path, split: str) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        if p.suffix not in EXTS or not p.is_file():
            continue
        name = p.name[: -len(p.suffix)]
        if name == split or name.startswith(f"{split}-") or p.parent.name == split:
            files.append(p)
    return files


def _read_arrow(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as src:
        try:
            return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            pass
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_file(src).read_all()


def read_split(source: str, split: str, columns: list[str], cache_dir: str | Path) -> pa.Table:
    """Return the ``columns`` of ``split`` of ``source`` (hub id or local path)."""
    path = Path(source).expanduser()
    if path.exists():
        if (path / split / "state.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(path / split))
            return _select(ds.with_format("arrow")[:], columns, f"{path / split}")
        if not path.is_dir():
            raise ValueError(f"{path} is a file; pass the folder that holds the dataset's "
                             "splits (a save_to_disk folder or the parquet/arrow files)")
        files = _split_files(path, split)
        if not files:
            raise FileNotFoundError(
                f"no '{split}' split under {path}: expected a save_to_disk folder "
                f"({path / split / 'state.json'}) or parquet/arrow files named '{split}-*.parquet'"
            )
        tables = []
        for f in files:
            try:
                t = pq.read_table(f) if f.suffix == ".parquet" else _read_arrow(f)
            except (pa.ArrowInvalid, OSError) as err:
                raise ValueError(f"cannot read {f} as {f.suffix[1:]}: {err}") from err
            tables.append(_select(t, columns, str(f)))
        return pa.concat_tables(tables)
    try:
        import datasets

        ds = datasets.load_dataset(source, split=split, cache_dir=str(cache_dir))
    except Exception as err:
        raise FileNotFoundError(
            f"could not load the '{split}' split of {source!r}: it is not a local path and the "
            f"Hugging Face hub load failed ({type(err).__name__}: {err}). Pass a local copy "
            "instead: a folder written by `datasets.load_dataset(...).save_to_disk(path)` or the "
            "dataset's parquet files."
        ) from err
    return _select(ds.with_format("arrow")[:], columns, source)


def _select(table: pa.Table, columns: list[str], where: str) -> pa.Table:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; it has {table.column_names}")
    return table.select(columns)
