"""LongMamba for lrm models: calibrate, then long prefills are filtered automatically.

    model = lrm.LRModel(lrm.ModelConfig(mixer="mamba2", mixer_kwargs={"longmamba": {}}, ...))
    ... train at length 256 ...
    lrm.longmamba.calibrate(model, [tokens_256], train_len=256)   # buffers, saved in checkpoints
    logits = model(tokens_4096)                                     # global heads filtered
    with lrm.longmamba.disabled(model):                            # the vanilla model
        logits = model(tokens_4096)
    with lrm.longmamba.prefill_length(model, 4096):                # stream a prompt in chunks
        for chunk in chunks: logits, state = model.step(chunk, state)

The method, its symbols and how it interacts with streaming are documented in
:mod:`lrm.ops.longmamba`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from lrm.ops.longmamba import LongMambaConfig, LongMambaFilter

__all__ = ["LongMambaConfig", "LongMambaFilter", "calibrate", "disabled", "filters",
           "prefill_length", "summary"]


def filters(model: nn.Module) -> list[LongMambaFilter]:
    """Every LongMamba filter in ``model`` (one per LongMamba-enabled Mamba/Mamba-2 mixer)."""
    return [m for m in model.modules() if isinstance(m, LongMambaFilter)]


def _filters_or_raise(model: nn.Module) -> list[LongMambaFilter]:
    found = filters(model)
    if not found:
        raise ValueError("the model has no LongMamba-enabled mixer; build the mamba/mamba2 "
                         "mixers with longmamba=True (or a dict of LongMambaConfig options)")
    return found


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], train_len: int) -> nn.Module:
    """Run the unfiltered model on calibration batches of exactly ``train_len`` tokens and
    store each filter's channel scores and Δ thresholds in its buffers.

    ``batches`` yields inputs that ``model`` accepts positionally (token tensors (B, train_len)
    for an LRModel, (B, train_len, d) for a bare mixer); every sequence of every batch is one
    calibration sample. Returns the model, in the train/eval mode it had.
    """
    fs = _filters_or_raise(model)
    was_training = model.training
    model.eval()
    for f in fs:
        f.start_calibration(train_len)
    try:
        for batch in batches:
            model(batch)
        for f in fs:
            f.finish_calibration()
    finally:
        for f in fs:
            f.abort_calibration()
        model.train(was_training)
    return model


@contextlib.contextmanager
def prefill_length(model: nn.Module, length: int) -> Iterator[None]:
    """Inside the context every call is filtered as a prefill of ``length`` tokens, whatever
    its own length, so a long prompt streamed in chunks equals the one-call prefill."""
    fs = _filters_or_raise(model)
    before = [f.prefill_len for f in fs]
    for f in fs:
        f.prefill_len = int(length)
    try:
        yield
    finally:
        for f, b in zip(fs, before, strict=True):
            f.prefill_len = b


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[None]:
    """Switch every filter off inside the context (the vanilla model, for comparisons)."""
    fs = _filters_or_raise(model)
    before = [f.enabled for f in fs]
    for f in fs:
        f.enabled = False
    try:
        yield
    finally:
        for f, b in zip(fs, before, strict=True):
            f.enabled = b


def summary(model: nn.Module) -> list[dict[str, Any]]:
    """Per filter: its module path, channels, global channels and calibration length."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, LongMambaFilter):
            rows.append({"module": name, "channels": m.channels,
                         "global": int(m.global_channels().sum()),
                         "train_len": int(m.train_len)})
    return rows
