"""Refuse optimizer steps whose gradients are not finite.

One inf or NaN gradient, stepped, makes every weight NaN (AdamW's moments carry it into every
later step), and the run is lost. Every training loop in lra (:class:`lra.module.LRAModule`
for ``lra fit`` and ``lra pretrain``, :func:`lra.quick.fit`) therefore looks at the global
gradient norm ‖g‖₂ = (Σ_p ‖∇p‖²)^½ after the backward pass: it is finite exactly when every
gradient entry is (barring an overflow of the sum itself, at gradients near 1e19). When it is
not, the optimizer step is skipped: the parameters and the optimizer's state (moments, step
counts) stay as they were, the step is counted and logged, and the count appears in the
summary at the end of the fit. The learning-rate schedule advances as for any step, as it
does for a step that a GradScaler skips.

The check costs one reduction over the gradients and one read of a scalar on the host (a GPU
sync) per step. A run whose gradients stay non-finite learns nothing: the Lightning module
stops it with what to do after ``MAX_IN_A_ROW`` skipped steps in a row, while :func:`lra.quick.fit`
runs on (its caller reads the non-finite losses, as the recall arena does to mark a diverged
run).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

MAX_IN_A_ROW = 25

# the stop's message (StepGuard.allows) and its parser (stopped_at) stay side by side
_STOP = "the gradients were not finite at {n} steps in a row (the last at step {step})"
_STOP_RE = re.compile(r"the gradients were not finite at (\d+) steps in a row "
                      r"\(the last at step (\d+)\)")


def stopped_at(text: str | None) -> int | None:
    """The first step of the streak of refused steps that stopped a run, read from the stop's
    message anywhere in ``text`` (a record's error, a worker's log tail); None when ``text``
    holds no such message. A run stopped so diverged: its store records count it as such
    (:func:`lra.leaderboard.sweep.diverged`)."""
    m = _STOP_RE.search(text or "")
    return None if m is None else int(m.group(2)) - int(m.group(1)) + 1


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The global 2-norm of the gradients of ``parameters`` (those that have one), as a 0-d
    tensor on their device: no host sync."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


class StepGuard:
    """Counts the steps refused for non-finite gradients; see the module docstring.

    ``allows(finite, step)`` is asked once per optimizer step with whether the gradients are
    finite; it returns whether the step may go ahead, and raises FloatingPointError at the
    ``max_in_a_row``-th refused step in a row (never, if None).
    """

    def __init__(self, max_in_a_row: int | None = MAX_IN_A_ROW) -> None:
        if max_in_a_row is not None and max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be at least 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.skipped = 0
        self.in_a_row = 0

    def allows(self, finite: bool, step: int) -> bool:
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d: gradients are not finite; the optimizer step is skipped "
                    "(%d skipped so far)", step, self.skipped)
        if self.max_in_a_row is not None and self.in_a_row >= self.max_in_a_row:
            raise FloatingPointError(
                _STOP.format(n=self.in_a_row, step=step) + ", so the run has stopped "
                "learning; lower the learning rate, "
                "enable gradient clipping (trainer.gradient_clip_val) or train in fp32")
        return False

    def summary(self) -> str | None:
        """The line for the end-of-fit summary, or None when no step was skipped."""
        if not self.skipped:
            return None
        steps = "step" if self.skipped == 1 else "steps"
        return f"{self.skipped} {steps} skipped: non-finite gradients"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = int(state.get("in_a_row", 0))
