"""lra/allocator.py: large freed tensors stay mapped, so using the memory again costs no page
faults; ``LRA_MALLOC=system`` leaves glibc's defaults (and then the faults are back, which is
what shows that this test can fail)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# a 64 MiB tensor (above glibc's largest adaptive mmap threshold, 32 MiB) written and freed
# again and again, as a training step's activations are. The first few uses may still fault
# while the heap settles (a freed block is not always reusable at once: measured here, 5-8
# uses); the steady state is what a training run lives in, so the test reads the last uses.
USES, TAIL = 16, 4
SNIPPET = f"""
import resource, torch
from lra.allocator import keep_freed_memory
applied = keep_freed_memory()
faults = []
for _ in range({USES}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20)
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, keep_freed_memory(), sum(faults[-{TAIL}:]))
"""
PAGES = 64 * 2**20 // 4096  # pages of the tensor: the faults of a fresh mapping


def last_uses(env_value: str | None) -> tuple[bool, bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "LRA_MALLOC"}
    if env_value is not None:
        env["LRA_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", out[1] == "True", int(out[2])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's mallopt; elsewhere it does nothing")
def test_freed_memory_is_reused_without_page_faults():
    applied, again, faults = last_uses(None)
    assert applied and again  # in force, and a second call reports the same
    assert faults < PAGES // 4, f"{faults} page faults in the last {TAIL} uses of 64 MiB"


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's mallopt; elsewhere it does nothing")
def test_lra_malloc_system_keeps_the_defaults_and_the_faults():
    applied, _, faults = last_uses("system")
    assert not applied
    assert faults > (TAIL - 1) * PAGES, f"only {faults} page faults in the last {TAIL} uses"


def test_the_harness_entry_points_apply_it(monkeypatch):
    """lra.quick.fit (the arena's and the claims' loop) calls it. That lrm never imports it is
    tests/lra/test_import_graph.py's rule (no lrm module imports anything of lra)."""
    import lra.quick

    calls = []
    monkeypatch.setattr(lra.quick, "keep_freed_memory", lambda: calls.append(1) or True)
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8))
    x = torch.randint(0, 8, (4, 6))
    lra.quick.fit(model, x, x, steps=1, batch_size=2)
    assert calls == [1]
