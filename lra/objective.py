"""The training objective every lra loop shares: the ignore index, the loss, the schedule.

- ``IGNORE`` (-100): the target of a position that is not scored (padding, the non-recall
  positions of a recall task, the unmasked positions of masked denoising);
- :func:`cross_entropy`: the loss of (N, C) logits against (N,) targets, computed in float32
  whatever the compute dtype, averaged over the scored positions only;
- :func:`warmup_cosine`: the learning-rate multiplier, a linear warmup then a cosine decay.

Used by the Lightning module (:mod:`lra.module`, and so ``lra fit`` and ``lra pretrain``) and by
the small loop :mod:`lra.quick`, so both score and schedule a run the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, C) logits against (N,) targets over the positions whose
    target is not ``IGNORE``; the logits are upcast to float32 first (a bf16 log-softmax over a
    large vocabulary loses the small probabilities)."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """The learning-rate multiplier at ``step``: linear warmup, then cosine down to min_ratio."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
