"""Shared test settings."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist every worker is its own process: one torch thread each keeps the workers
# from fighting over the cores (CI has two).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same global RNG state, so no result depends on which tests
    ran before it in the same worker (pytest-xdist deals tests out differently from run to run)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small tensors, where threads only add overhead (and
    the test machine is shared); the count is restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
