"""Read a split of a Hugging Face dataset from the hub or from local files, as a pyarrow Table.

``source`` is either a hub id (``stanfordnlp/imdb``, ``uoft-cs/cifar10``) or a local path:

- a folder written by ``Dataset(Dict).save_to_disk`` (``<path>/<split>/state.json``);
- a folder of parquet or arrow files named like the hub's (``plain_text/train-00000-of-00001
  .parquet``), i.e. any file under it whose name is ``<split>.<ext>`` or starts with
  ``<split>-``, or that sits in a ``<split>/`` folder.

Local files are read with pyarrow directly; ``datasets`` is imported only for ``save_to_disk``
folders and hub ids.

A hub id on a machine that cannot reach the hub fails within seconds: the hub's host is tried
once with a short timeout (``HUB_TIMEOUT_S``), and when it does not answer, ``datasets`` runs
offline (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), so that a cached copy still loads and a
missing one fails at once instead of after minutes of retries. The error names the option
that takes a local copy.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

EXTS = (".parquet", ".arrow")
HUB_TIMEOUT_S = 3.0
# How the shipped data modules take a local copy (their ``dataset`` argument).
LOCAL_COPY_OPTION = "--data.init_args.dataset PATH (dataset=PATH in Python)"


class DatasetUnavailable(FileNotFoundError):
    """A dataset that is neither a local path nor loadable from the hub; the message says how to
    pass a local copy. ``lra fit`` prints it alone, without a traceback."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or to the HTTPS proxy in front of it) opens within
    ``timeout`` seconds; a name that does not resolve counts as unreachable."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy if proxy else hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline() -> None:
    """Make ``datasets`` and ``huggingface_hub`` use their caches only, in this process."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    # both read the variables at import: where they are imported already, set their flags
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_HUB_OFFLINE = True
        if hasattr(sys.modules["datasets"].config, "HF_DATASETS_OFFLINE"):
            sys.modules["datasets"].config.HF_DATASETS_OFFLINE = True


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
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or not hub_reachable()
    if offline:
        _go_offline()
    try:
        import datasets

        ds = datasets.load_dataset(source, split=split, cache_dir=str(cache_dir))
    except Exception as err:
        why = (f"the Hugging Face hub ({hub_endpoint()}) cannot be reached from this machine "
               f"and no copy is in the cache ({cache_dir})" if offline else
               f"it is not a local path and the Hugging Face hub load failed "
               f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        raise DatasetUnavailable(
            f"could not load the '{split}' split of {source!r}: {why}. Pass a local copy with "
            f"{LOCAL_COPY_OPTION}: a folder written by `datasets.load_dataset({source!r})"
            f".save_to_disk(PATH)` on a machine with access, or the dataset's parquet files."
        ) from err
    return _select(ds.with_format("arrow")[:], columns, source)


def _select(table: pa.Table, columns: list[str], where: str) -> pa.Table:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; it has {table.column_names}")
    return table.select(columns)
