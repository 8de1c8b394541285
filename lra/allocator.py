"""Keep large freed blocks in the process, so that a CPU training step reuses memory it already
has instead of asking the kernel for fresh pages.

Why. glibc's ``malloc`` serves every request above its mmap threshold with a fresh ``mmap`` and
hands it back to the kernel on ``free``. The threshold adapts up to 32 MiB, so a tensor larger
than that (at L = 2048 and batch 32, a (B, L, 256) activation is 64 MiB) is new, unmapped memory
every step, and every one of its 4 KiB pages is zeroed by the kernel on its first touch (a minor
page fault). At the sizes people train on a CPU this is no small tax: one training step of the
recall arena's Mamba-2 model at d = 128, L = 2048 took 3.8 million page faults and spent more
time in the kernel than in PyTorch (docs/bench/speed.md, "The allocator", with the command).

What. :func:`keep_freed_memory` raises the threshold (``mallopt(M_MMAP_THRESHOLD, 1 GiB)``), so
blocks up to 1 GiB come from the heap and go back to it, and the trim threshold with it
(``M_TRIM_THRESHOLD``, else a freed block at the top of the heap would be returned to the kernel
at once), so the next step finds the memory already mapped. Reuse is not guaranteed block by
block (a small allocation may take the start of a freed block, and the next large one then
extends the heap), but over a training step's many tensors most of the faults go. The price is
memory: the heap keeps what it once held, so the peak resident size grows (by a third in the
measurement above). Setting the thresholds also stops glibc's adaptation of them.

Where. The harness's entry points call it (``lra`` and its worker processes, and
:func:`lra.quick.fit`); ``lrm`` never does, so importing the library changes nothing in a
user's process. ``LRA_MALLOC=system`` in the environment leaves glibc's defaults alone, and so
does a threshold set through glibc's own variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``: the memory benchmarks set one to see the live peak). The setting is
glibc's: elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "LRA_MALLOC"  # "system": leave the C library's allocator as it is
THRESHOLD = 1 << 30  # bytes, 1 GiB: blocks up to this size come from the heap, and the heap's
# top is returned to the kernel only once this much of it is free
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> parameter numbers

_applied: bool | None = None  # the outcome of the first call (the setting is process-wide)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`THRESHOLD` (once per process). Returns
    whether the setting is in force: False where ``LRA_MALLOC=system`` asks for the defaults or
    glibc's own variables set a threshold, off glibc, or where glibc refuses the value."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False  # the caller chose glibc's thresholds
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    _applied = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(THRESHOLD))
                   for param in (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD))
    return _applied
