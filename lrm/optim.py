"""Optimizer parameter groups from the tags that modules put on their parameters."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model``'s parameters into AdamW groups.

    - parameters tagged with :func:`lrm.nn.tag` get their own group with the tagged
      ``lr``/``weight_decay`` (e.g. SSM ``A``, ``dt``: no decay, lr 1e-3 in S4);
    - biases, norm weights and embeddings (every parameter with fewer than 2 dimensions, and
      ``nn.Embedding`` weights) get no weight decay, as is customary;
    - everything else gets ``weight_decay``.
    """
    no_decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        opts = getattr(p, "_optim", {})
        wd = 0.0 if (p.dim() < 2 or id(p) in no_decay_ids) else weight_decay
        key = (float(opts.get("lr", lr)), float(opts.get("weight_decay", wd)))
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": g_wd}
            for (g_lr, g_wd), ps in sorted(groups.items())]
