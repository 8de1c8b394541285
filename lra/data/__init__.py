"""The Long Range Arena data layer: one LightningDataModule per task, plus generators.

==========  ==================================  ========  =======  =====  =======================
task        DataModule                          length    classes  vocab  source
==========  ==================================  ========  =======  =====  =======================
ListOps     ``ListOpsDataModule``               2048      10       18     release TSV / generated
Text        ``IMDBDataModule``                  4096      2        258    HF ``stanfordnlp/imdb``
Retrieval   ``AANDataModule``                   2 x 4000  2        258    release TSV
Image       ``CIFAR10DataModule``               1024      10       256    HF ``uoft-cs/cifar10``
Pathfinder  ``PathfinderDataModule(res=32)``    1024      2        256    release PNG / generated
Path-X      ``PathfinderDataModule(res=128)``   16384     2        256    release PNG / generated
==========  ==================================  ========  =======  =====  =======================

Batches are dicts: ``inputs`` (B, L) long token ids, right-padded with 0; ``lengths`` (B,);
``targets`` (B,); retrieval adds ``inputs2`` and ``lengths2``. ``dm.model_hints()`` gives the
ModelConfig fields a task fixes (vocab_size, n_classes, head, pooling). Each task module's
docstring states its vocabulary, splits and sources. Generators, one module each:
:mod:`lra.data.listops_generator` and :mod:`lra.data.pathfinder_generator` (the command line
``lra generate listops|pathfinder --out DIR`` is :mod:`lra.data.generate`), and
:mod:`lra.data.recall_tasks` for the synthetic recall tasks (MQAR, copying, induction, passkey),
served by :class:`lra.data.recall.RecallDataModule`.

The DataModules are imported lazily, so ``lra generate`` and the generator's worker processes
start without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ListOpsDataModule": "lra.data.listops",
    "IMDBDataModule": "lra.data.text",
    "AANDataModule": "lra.data.retrieval",
    "CIFAR10DataModule": "lra.data.image",
    "PathfinderDataModule": "lra.data.pathfinder",
    "LRADataModule": "lra.data.common",
    "collate": "lra.data.common",
}
TASKS = {
    "listops": "ListOpsDataModule",
    "text": "IMDBDataModule",
    "retrieval": "AANDataModule",
    "image": "CIFAR10DataModule",
    "pathfinder": "PathfinderDataModule",
    "pathx": "PathfinderDataModule",
}

__all__ = [*_EXPORTS, "TASKS"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lra.data' has no attribute {name!r}")
