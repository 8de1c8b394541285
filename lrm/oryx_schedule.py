"""The schedule of the Oryx multi-mixer (:mod:`lrm.mixers.oryx`): which absolute positions run
in attention mode (m_t = 1) and which in recurrent mode (m_t = 0).

A schedule decides m_t from the absolute position t, a seed and nothing else, so the full
sequence, chunks with a state, and token-by-token decoding agree for every schedule. Specs:

- ``attn`` (m ≡ 1), ``rec`` (m ≡ 0);
- ``from:P``: attention at t ≥ P;
- ``suffix:F``: attention on the last fraction F of the call, resolved to ``from:⌈(1−F)L⌉``
  by a stateless call (which knows L). A stream does not know its end: pass ``from:P``;
- ``every:N:W``: attention on the last W positions of every period of N (t mod N ≥ N − W);
- ``rand:P[:C[:SEED]]``: chunk c = ⌊t / C⌋ (C = 64 unless given) is in attention mode iff
  u(SEED, c) < P, u = :func:`hash_uniform`. Schedules at different P are nested.

A model-level helper, beside :mod:`lrm.longmamba`: :func:`use_schedule` sets a schedule on
every Oryx layer of a model for the duration of a block.

    with use_schedule(model, "suffix:0.1"):
        logits = model(tokens)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Schedule", "hash_uniform", "runs", "use_schedule"]

_M32 = 0xFFFFFFFF


def hash_uniform(seed: int, idx: torch.Tensor) -> torch.Tensor:
    """A fixed integer hash of (seed, idx) mapped to [0, 1), float64, elementwise on idx.

    Every product stays below 2^63, so int64 never overflows and the result is the same on
    every device and platform."""
    x = (idx.long() * 0x9E3779B1 + (int(seed) & 0x7FFFFFFF) * 0x7FEB352D + 0x165667B1) & _M32
    for mult in (0x2C1B3C6D, 0x297A2D39):
        x = ((x ^ (x >> 15)) * mult) & _M32
    x = x ^ (x >> 15)
    return x.double() / 2.0 ** 32


@dataclass(frozen=True)
class Schedule:
    """Which absolute positions run in attention mode. Build it from a spec with
    :meth:`parse` (see the module docstring for the specs)."""

    kind: str  # "attn", "rec", "from", "suffix", "every", "rand"
    p: float = 0.0  # suffix: F; rand: P
    n: int = 0  # from: P; every: N; rand: C
    w: int = 0  # every: W
    seed: int = 0  # rand: SEED

    @classmethod
    def parse(cls, spec: str | Schedule) -> Schedule:
        if isinstance(spec, Schedule):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"a schedule is a spec string or a Schedule, got {type(spec)}")
        parts = spec.strip().lower().split(":")
        kind, args = parts[0], parts[1:]
        try:
            if kind in ("attn", "rec") and not args:
                return cls(kind)
            if kind == "from" and len(args) == 1 and int(args[0]) >= 0:
                return cls(kind, n=int(args[0]))
            if kind == "suffix" and len(args) == 1 and 0.0 <= float(args[0]) <= 1.0:
                return cls(kind, p=float(args[0]))
            if kind == "every" and len(args) == 2 and 0 <= int(args[1]) <= int(args[0]) > 0:
                return cls(kind, n=int(args[0]), w=int(args[1]))
            if kind == "rand" and 1 <= len(args) <= 3 and 0.0 <= float(args[0]) <= 1.0:
                chunk = int(args[1]) if len(args) > 1 else 64
                if chunk > 0:
                    return cls(kind, p=float(args[0]), n=chunk,
                               seed=int(args[2]) if len(args) > 2 else 0)
        except ValueError:
            pass
        raise ValueError(
            f"bad schedule {spec!r}; use one of 'attn', 'rec', 'from:P' (P >= 0), "
            f"'suffix:F' (0 <= F <= 1), 'every:N:W' (0 <= W <= N), 'rand:P[:C[:SEED]]' "
            f"(0 <= P <= 1, chunk C >= 1)")

    def resolve(self, total_len: int) -> Schedule:
        """``suffix:F`` at a known total length is ``from:⌈(1 − F)·total_len⌉``; others as is.
        Use it before streaming a sequence whose length the caller knows."""
        if self.kind != "suffix":
            return self
        return Schedule("from", n=math.ceil((1.0 - self.p) * total_len - 1e-9))

    def mask(self, start: int, length: int, total_len: int | None = None) -> torch.Tensor:
        """(length,) bool on the CPU: the mode of absolute positions start..start+length−1
        (True = attention). ``total_len`` resolves ``suffix``; a stream has none."""
        sched = self
        if self.kind == "suffix":
            if total_len is None:
                raise ValueError("schedule 'suffix:F' needs the sequence's total length, which "
                                 "a stream (a call with a state) does not know; resolve it "
                                 "first: Schedule.parse('suffix:F').resolve(total_len), i.e. "
                                 "'from:P'")
            sched = self.resolve(total_len)
        t = torch.arange(start, start + length)
        if sched.kind == "attn":
            return torch.ones(length, dtype=torch.bool)
        if sched.kind == "rec":
            return torch.zeros(length, dtype=torch.bool)
        if sched.kind == "from":
            return t >= sched.n
        if sched.kind == "every":
            return t % sched.n >= sched.n - sched.w
        return hash_uniform(sched.seed, t // sched.n) < sched.p  # rand

    def fraction(self, length: int) -> float:
        """The share of attention positions in a sequence of ``length`` tokens from 0."""
        return self.mask(0, length, length).double().mean().item() if length else 0.0


def runs(mask: torch.Tensor) -> list[tuple[int, int, bool]]:
    """Maximal runs of equal values in a 1-D bool mask: [(start, end, value), ...]."""
    m = mask.tolist()
    out, s = [], 0
    for i in range(1, len(m) + 1):
        if i == len(m) or m[i] != m[s]:
            out.append((s, i, bool(m[s])))
            s = i
    return out


@contextmanager
def use_schedule(model: nn.Module, schedule: str | Schedule | None) -> Iterator[None]:
    """Run every Oryx layer of ``model`` with ``schedule`` inside the block (None: back to
    each layer's own); the previous settings come back on exit.

        with use_schedule(model, "suffix:0.1"):
            logits = model(tokens)
    """
    # an Oryx layer is a module with a schedule_override slot (read by the mixer, so this
    # module need not import the mixer, which imports this module)
    layers = [m for m in model.modules() if hasattr(m, "schedule_override")]
    if not layers:
        raise ValueError("use_schedule: the model has no Oryx layer")
    sched = None if schedule is None else Schedule.parse(schedule)
    before = [m.schedule_override for m in layers]
    try:
        for m in layers:
            m.schedule_override = sched
        yield
    finally:
        for m, old in zip(layers, before, strict=True):
            m.schedule_override = old
