"""A CSV logger that keeps the metrics of the run it resumes.

Lightning's CSVLogger deletes ``metrics.csv`` when its folder already exists, so resuming a
killed run into its own version folder (``lra fit --config runs/.../config.yaml --ckpt_path
...``) would throw away every row logged before the kill. This one keeps the file and appends.
Rows logged between the last checkpoint and the kill are logged again after the resume; since
the resume is exact (tests/lra/test_harness.py), the repeated rows carry the same values.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                # adopt the header, so new rows append under the same columns
                self.metrics_keys = list(next(csv.reader(f), []))


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to an existing ``metrics.csv``."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
