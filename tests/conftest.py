"""Shared test settings."""

from __future__ import annotations

import os

import torch

# Under pytest-xdist every worker is its own process: one torch thread each keeps the workers
# from fighting over the cores (CI has two).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
